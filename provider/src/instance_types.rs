//! The built-in instance-type table (from EC2's published limits) and kubelet's max-pods worked
//! out from it as the reference VPC CNI's `max-pods-calculator.sh` does.
//!
//! The table lets start-up need no DescribeInstanceTypes call for common types; it also says
//! how many vCPUs a type has (the max-pods cap depends on it) and whether it is built on Nitro
//! (only Nitro types take /28 prefixes on their ENIs).

use thiserror::Error;

use crate::Limits;

/// What the built-in table knows of an instance type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceTypeFacts {
    pub limits: Limits,
    pub vcpus: u32,
    /// Built on the Nitro system: ENIs can hold IPv4 prefixes.
    pub nitro: bool,
}

/// (type, ENIs, IPv4 per ENI, vCPUs, Nitro)
const TABLE: &[(&str, u32, u32, u32, bool)] = &[
    ("t2.medium", 3, 6, 2, false),
    ("t3.nano", 2, 2, 2, true),
    ("t3.micro", 2, 2, 2, true),
    ("t3.small", 3, 4, 2, true),
    ("t3.medium", 3, 6, 2, true),
    ("t3.large", 3, 12, 2, true),
    ("t3.xlarge", 4, 15, 4, true),
    ("t3.2xlarge", 4, 15, 8, true),
    ("m4.large", 2, 10, 2, false),
    ("m5.large", 3, 10, 2, true),
    ("m5.xlarge", 4, 15, 4, true),
    ("m5.2xlarge", 4, 15, 8, true),
    ("m5.4xlarge", 8, 30, 16, true),
    ("m5.8xlarge", 8, 30, 32, true),
    ("m5.12xlarge", 8, 30, 48, true),
    ("m5.16xlarge", 15, 50, 64, true),
    ("m5.24xlarge", 15, 50, 96, true),
    ("c5.large", 3, 10, 2, true),
    ("c5.xlarge", 4, 15, 4, true),
    ("c5.2xlarge", 4, 15, 8, true),
    ("c5.4xlarge", 8, 30, 16, true),
    ("c5.9xlarge", 8, 30, 36, true),
    ("c5.12xlarge", 8, 30, 48, true),
    ("c5.18xlarge", 15, 50, 72, true),
    ("c5.24xlarge", 15, 50, 96, true),
    ("r5.large", 3, 10, 2, true),
    ("r5.xlarge", 4, 15, 4, true),
    ("r5.2xlarge", 4, 15, 8, true),
    ("r5.4xlarge", 8, 30, 16, true),
    ("r5.8xlarge", 8, 30, 32, true),
    ("r5.12xlarge", 8, 30, 48, true),
    ("r5.16xlarge", 15, 50, 64, true),
    ("r5.24xlarge", 15, 50, 96, true),
];

/// The table's entry for `instance_type`.
pub fn builtin_type(instance_type: &str) -> Option<InstanceTypeFacts> {
    TABLE.iter().find(|row| row.0 == instance_type).map(|&(_, max_enis, ipv4_per_eni, vcpus, nitro)| {
        InstanceTypeFacts { limits: Limits { max_enis, ipv4_per_eni }, vcpus, nitro }
    })
}

/// Every type in the table, in its order.
pub fn builtin_type_names() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|row| row.0)
}

/// Addresses one ENI slot gives in prefix mode (a /28).
pub const ADDRESSES_PER_PREFIX: u32 = 16;
/// The calculator's caps: below this many vCPUs, at most [`MAX_PODS_SMALL`]; else [`MAX_PODS_LARGE`].
pub const MAX_PODS_CAP_VCPUS: u32 = 30;
pub const MAX_PODS_SMALL: u32 = 110;
pub const MAX_PODS_LARGE: u32 = 250;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaxPodsError {
    #[error("instance type {0:?} is not in the built-in table")]
    UnknownType(String),
    #[error("instance type {0:?} is not built on Nitro: its ENIs cannot hold prefixes")]
    NotNitro(String),
    #[error("instance type {0:?} has one ENI: with custom networking no ENI is left for pods")]
    NoPodEni(String),
}

/// How kubelet's max-pods is set for `instance_type`, as the reference's calculator works it out:
/// pod addresses per ENI (its slots but the primary address; 16 per slot with prefixes) times
/// the ENIs pods may use (all, or all but the primary with custom networking), plus 2 for pods
/// on the host network, capped at 110 below 30 vCPUs and 250 from 30 up.
pub fn max_pods(instance_type: &str, prefix_delegation: bool, custom_networking: bool) -> Result<u32, MaxPodsError> {
    let facts = builtin_type(instance_type).ok_or_else(|| MaxPodsError::UnknownType(instance_type.into()))?;
    if prefix_delegation && !facts.nitro {
        return Err(MaxPodsError::NotNitro(instance_type.into()));
    }
    let enis = if custom_networking { facts.limits.max_enis - 1 } else { facts.limits.max_enis };
    if enis == 0 {
        return Err(MaxPodsError::NoPodEni(instance_type.into()));
    }
    let per_slot = if prefix_delegation { ADDRESSES_PER_PREFIX } else { 1 };
    let by_addresses = enis * facts.limits.pod_ips_per_eni() * per_slot + 2;
    let cap = if facts.vcpus < MAX_PODS_CAP_VCPUS { MAX_PODS_SMALL } else { MAX_PODS_LARGE };
    Ok(by_addresses.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_calculators_figures() {
        // The reference's documented m5.large: 29 without prefixes, 110 with.
        assert_eq!(max_pods("m5.large", false, false), Ok(29));
        assert_eq!(max_pods("m5.large", true, false), Ok(110));
        // Custom networking: the primary ENI serves no pods.
        assert_eq!(max_pods("m5.large", false, true), Ok(20));
        assert_eq!(max_pods("m5.large", true, true), Ok(110));
        assert_eq!(max_pods("t3.nano", false, false), Ok(4));
        assert_eq!(max_pods("t3.nano", true, false), Ok(34));
        assert_eq!(max_pods("t3.nano", false, true), Ok(3));
        // The cap: 110 below 30 vCPUs (m5.4xlarge: 16), 250 from 30 up (c5.9xlarge: 36).
        assert_eq!(max_pods("m5.4xlarge", false, false), Ok(110));
        assert_eq!(max_pods("c5.9xlarge", false, false), Ok(234));
        assert_eq!(max_pods("c5.9xlarge", true, false), Ok(250));
        assert_eq!(max_pods("m5.24xlarge", false, false), Ok(250));
        assert_eq!(max_pods("m4.large", false, false), Ok(20));
    }

    #[test]
    fn what_cannot_be_worked_out_is_an_error_that_names_the_type() {
        let unknown = max_pods("m7i.large", false, false).unwrap_err();
        assert_eq!(unknown, MaxPodsError::UnknownType("m7i.large".into()));
        assert!(unknown.to_string().contains("m7i.large"));
        let xen = max_pods("m4.large", true, false).unwrap_err();
        assert!(xen.to_string().contains("m4.large") && xen.to_string().contains("Nitro"), "{xen}");
    }

    #[test]
    fn every_row_is_sane_and_named_once() {
        let names: Vec<&str> = builtin_type_names().collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a type listed twice");
        for name in names {
            let f = builtin_type(name).unwrap();
            assert!(f.limits.max_enis >= 2 && f.limits.ipv4_per_eni >= 2 && f.vcpus >= 1, "{name}: {f:?}");
        }
    }
}
