"""A model of each subnet's IPv4 space, in front of moto, faithful to EC2's documented behaviour.

moto 5.2.5 knows nothing of prefix delegation: it ignores `Ipv4PrefixCount`, never lists a
prefix, and draws secondary IPs at random anywhere in the subnet (even on an address another ENI
holds, and forever when the subnet is full). This model takes over every address decision:

- Every IPv4 address moto would draw (an instance's or ENI's primary, `SecondaryPrivateIpAddressCount`)
  is picked here: the lowest free address of the subnet. Free means not one of the subnet's five
  reserved addresses (network, router, DNS, future use, broadcast), not held by any ENI (primary
  or secondary), not inside any ENI's prefix, and not picked earlier in the same request.
- `AssignPrivateIpAddresses` is answered here, atomically, as EC2 answers it: with
  `SecondaryPrivateIpAddressCount` or `PrivateIpAddress.N`, or with `Ipv4PrefixCount` or
  `Ipv4Prefix.N` (never both kinds in one call), the new addresses or prefixes only in
  `assignedPrivateIpAddressesSet` / `assignedIpv4PrefixSet`. A prefix is a /28 aligned inside the
  subnet that overlaps no address or prefix in use; the lowest such block is taken.
- The slot limit of an attached ENI is its instance type's IPv4 addresses per interface (moto's
  own instance-type data): the primary, each secondary IP and each prefix take one slot.
- Errors as EC2 names them: `InsufficientFreeAddressesInSubnet` (not enough free addresses),
  `InsufficientCidrBlocks` (free addresses, but not enough free aligned /28s),
  `PrivateIpAddressLimitExceeded`, `InvalidParameterCombination`, `InvalidParameterValue` (an
  address or prefix outside the subnet, reserved, misaligned, or not assigned when unassigning),
  `InvalidIPAddress.InUse`.
- `UnassignPrivateIpAddresses` takes `PrivateIpAddress.N` and `Ipv4Prefix.N`, all or nothing.
- `CreateNetworkInterface` takes `Ipv4PrefixCount` / `Ipv4Prefix.N`; the prefixes appear in its
  answer, and in `DescribeNetworkInterfaces` and `DescribeInstances` (moto serialises the ENI's
  `ipv4_prefixes` attribute into `ipv4PrefixSet` once it exists).
- `DescribeSubnets`' `availableIpAddressCount` counts prefixes (16 addresses each).

Standard library plus moto only. Every entry point runs under the fault layer's lock, so picks
and commits never interleave with another request.
"""

import ipaddress
import threading
import uuid

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.exceptions import ServiceException
from moto.ec2.models import ec2_backends
from moto.ec2.models import elastic_network_interfaces as moto_enis
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.ec2.models.subnets import Subnet

PREFIX_LEN = 28
BLOCK = 16
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class Ec2Error(Exception):
    """An answer EC2 gives as an error: HTTP 400 with a code."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def region_of(environ):
    """The region of a SigV4-signed request (`Credential=KEY/DATE/REGION/ec2/aws4_request`)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    try:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        return scope[2]
    except IndexError:
        return "us-east-1"


def multi(params, name):
    """`Name.1`, `Name.2`, ... in index order."""
    found = []
    for key, value in params.items():
        head, _, index = key.rpartition(".")
        if head == name and index.isdigit():
            found.append((int(index), value[0]))
    return [v for _, v in sorted(found)]


def single(params, name):
    v = params.get(name)
    return v[0] if v else None


def count_param(params, name):
    v = single(params, name)
    if v is None:
        return 0
    try:
        n = int(v)
    except ValueError:
        raise Ec2Error("InvalidParameterValue", f"Value ({v}) for parameter {name} is invalid.") from None
    if n < 1:
        raise Ec2Error("InvalidParameterValue", f"Value ({v}) for parameter {name} is invalid. Must be at least 1.")
    return n


class SubnetModel:
    def __init__(self):
        # What the current request picked but moto has not recorded yet (addresses as ints, and
        # the first address of each /28 block).
        self.pending_addresses = set()
        self.pending_blocks = set()
        # Prefixes the CreateNetworkInterface being served gives its new ENI.
        self.new_eni_prefixes = []
        self.backend = None
        self.lock = threading.Lock()
        self.install()

    # --- moto's own draws, rerouted here ---------------------------------------------------------

    def install(self):
        model = self
        original_draw = moto_enis.random_private_ip

        def draw(cidr=None, ipv6=False):
            if ipv6 or cidr is None:
                return original_draw(cidr, ipv6)
            subnets = [s for s in model.all_subnets() if s.cidr_block == cidr]
            if not subnets:
                return original_draw(cidr, ipv6)
            return model.take_addresses(subnets, 1)[0]

        moto_enis.random_private_ip = draw

        def get_available_subnet_ip(subnet, instance):
            ip = model.take_addresses([subnet], 1)[0]
            subnet._subnet_ips[ip] = instance
            return ip

        Subnet.get_available_subnet_ip = get_available_subnet_ip

        def available_ip_address_count(subnet):
            net = subnet.cidr
            usable = net.num_addresses - 5
            used = {a for a in model.used_addresses([subnet]) if not model.reserved(net, a)}
            blocks = model.prefix_blocks([subnet])
            return usable - len(used) - BLOCK * len(blocks)

        Subnet.available_ip_address_count = property(available_ip_address_count)

        original_init = NetworkInterface.__init__

        def eni_init(eni, *args, **kwargs):
            original_init(eni, *args, **kwargs)
            eni.ipv4_prefixes = [{"Ipv4Prefix": p} for p in model.new_eni_prefixes]
            model.new_eni_prefixes = []

        NetworkInterface.__init__ = eni_init

    # --- the address space ----------------------------------------------------------------------

    def all_backends(self):
        if self.backend is not None:
            return [self.backend]
        return []

    def all_subnets(self):
        return [s for b in self.all_backends() for zone in b.subnets.values() for s in zone.values()]

    def enis_in(self, subnets):
        ids = {s.id for s in subnets}
        return [e for b in self.all_backends() for e in b.enis.values() if e.subnet is not None and e.subnet.id in ids]

    @staticmethod
    def reserved(net, a):
        first = int(net.network_address)
        return a - first in (0, 1, 2, 3) or a == int(net.broadcast_address)

    def used_addresses(self, subnets):
        used = set(self.pending_addresses)
        for eni in self.enis_in(subnets):
            if eni.private_ip_address:
                used.add(int(ipaddress.IPv4Address(eni.private_ip_address)))
            for item in eni.private_ip_addresses or []:
                ip = item.get("PrivateIpAddress")
                if ip:
                    used.add(int(ipaddress.IPv4Address(ip)))
        for s in subnets:
            for ip in s._subnet_ips:
                try:
                    used.add(int(ipaddress.IPv4Address(ip)))
                except ValueError:
                    pass
        return used

    def prefix_blocks(self, subnets):
        blocks = set(self.pending_blocks)
        for eni in self.enis_in(subnets):
            for p in getattr(eni, "ipv4_prefixes", []):
                blocks.add(int(ipaddress.IPv4Network(p["Ipv4Prefix"]).network_address))
        return blocks

    def free_addresses(self, subnets, n):
        """The lowest `n` free addresses (ints) of `subnets[0]`'s CIDR, or None if there are fewer."""
        net = subnets[0].cidr
        used = self.used_addresses(subnets)
        blocks = self.prefix_blocks(subnets)
        out = []
        for a in range(int(net.network_address), int(net.broadcast_address) + 1):
            if self.reserved(net, a) or a in used or (a & ~(BLOCK - 1)) in blocks:
                continue
            out.append(a)
            if len(out) == n:
                return out
        return None

    def free_blocks(self, subnets, n):
        """The lowest `n` free /28s (first addresses as ints) inside `subnets[0]`, or None."""
        net = subnets[0].cidr
        if net.prefixlen > PREFIX_LEN:
            return None
        taken = {a & ~(BLOCK - 1) for a in self.used_addresses(subnets)} | self.prefix_blocks(subnets)
        out = []
        for start in range(int(net.network_address), int(net.broadcast_address) + 1, BLOCK):
            if any(self.reserved(net, a) for a in (start, start + BLOCK - 1)) or start == int(net.network_address):
                continue
            if start in taken:
                continue
            out.append(start)
            if len(out) == n:
                return out
        return None

    def take_addresses(self, subnets, n):
        found = self.free_addresses(subnets, n)
        if found is None:
            raise ServiceException(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet {subnets[0].id} has no free addresses to satisfy the request.",
            )
        self.pending_addresses.update(found)
        return [str(ipaddress.IPv4Address(a)) for a in found]

    def take_blocks(self, subnet, n):
        found = self.free_blocks([subnet], n)
        if found is None:
            raise Ec2Error(
                "InsufficientCidrBlocks",
                f"There are not enough free cidr blocks in the specified subnet {subnet.id} to satisfy the request.",
            )
        self.pending_blocks.update(found)
        return [f"{ipaddress.IPv4Address(a)}/{PREFIX_LEN}" for a in found]

    def check_address(self, subnet, ip):
        try:
            a = ipaddress.IPv4Address(ip)
        except ValueError:
            raise Ec2Error("InvalidParameterValue", f"Invalid IPv4 address: {ip}") from None
        if a not in subnet.cidr or self.reserved(subnet.cidr, int(a)):
            raise Ec2Error("InvalidParameterValue", f"Address {ip} is not a usable address of subnet {subnet.id}.")
        n = int(a)
        if n in self.used_addresses([subnet]) or (n & ~(BLOCK - 1)) in self.prefix_blocks([subnet]):
            raise Ec2Error("InvalidIPAddress.InUse", f"Address {ip} is in use.")
        self.pending_addresses.add(n)
        return str(a)

    def check_prefix(self, subnet, prefix):
        try:
            p = ipaddress.IPv4Network(prefix, strict=True)
        except ValueError:
            raise Ec2Error("InvalidParameterValue", f"Invalid IPv4 prefix: {prefix}") from None
        start = int(p.network_address)
        if p.prefixlen != PREFIX_LEN or not p.subnet_of(subnet.cidr) or self.reserved(subnet.cidr, start) or (
            self.reserved(subnet.cidr, start + BLOCK - 1)
        ):
            raise Ec2Error("InvalidParameterValue", f"Prefix {prefix} is not a usable /28 of subnet {subnet.id}.")
        taken = {a & ~(BLOCK - 1) for a in self.used_addresses([subnet])} | self.prefix_blocks([subnet])
        if start in taken:
            raise Ec2Error("InvalidParameterValue", f"Prefix {prefix} overlaps addresses in use.")
        self.pending_blocks.add(start)
        return str(p)

    @staticmethod
    def slot_limit(eni):
        """The attached ENI's IPv4 slots (its instance type's), or None when unattached."""
        instance = getattr(eni, "instance", None)
        if instance is None:
            return None
        info = INSTANCE_TYPES.get(instance.instance_type, {}).get("NetworkInfo", {})
        return info.get("Ipv4AddressesPerInterface")

    @staticmethod
    def slots_used(eni):
        return len(eni.private_ip_addresses or []) + len(getattr(eni, "ipv4_prefixes", []))

    # --- requests -------------------------------------------------------------------------------

    def handle(self, action, params, environ):
        """An answer (status, body) for the actions the model serves itself, or None to pass the
        request on to moto. Called under the fault layer's lock."""
        self.backend = ec2_backends[DEFAULT_ACCOUNT_ID][region_of(environ)]
        self.pending_addresses.clear()
        self.pending_blocks.clear()
        self.new_eni_prefixes = []
        try:
            if action == "AssignPrivateIpAddresses":
                return self.assign(params)
            if action == "UnassignPrivateIpAddresses":
                return self.unassign(params)
            if action == "CreateNetworkInterface":
                self.prepare_create(params)
            if action == "RunInstances":
                self.prepare_run(params)
        except (Ec2Error, ServiceException) as e:
            return ("error", e.code, e.message)
        return None

    def done(self):
        """After moto answered: what it recorded is visible in its own state now."""
        self.pending_addresses.clear()
        self.pending_blocks.clear()
        self.new_eni_prefixes = []

    def find_eni(self, params):
        eni_id = single(params, "NetworkInterfaceId")
        for eni in self.backend.enis.values():
            if eni.id == eni_id:
                return eni
        return None

    def assign(self, params):
        eni = self.find_eni(params)
        if eni is None:
            return None  # moto answers InvalidNetworkInterfaceID.NotFound
        count = count_param(params, "SecondaryPrivateIpAddressCount")
        ips = multi(params, "PrivateIpAddress")
        prefix_count = count_param(params, "Ipv4PrefixCount")
        prefixes = multi(params, "Ipv4Prefix")
        kinds = [bool(count), bool(ips), bool(prefix_count), bool(prefixes)]
        if sum(kinds) > 1:
            raise Ec2Error(
                "InvalidParameterCombination",
                "Specify only one of SecondaryPrivateIpAddressCount, PrivateIpAddresses, Ipv4PrefixCount, Ipv4Prefixes.",
            )
        if sum(kinds) == 0:
            raise Ec2Error("MissingParameter", "Specify private IP addresses or IPv4 prefixes to assign.")
        wanted = count + len(ips) + prefix_count + len(prefixes)
        limit = self.slot_limit(eni)
        if limit is not None and self.slots_used(eni) + wanted > limit:
            raise Ec2Error("PrivateIpAddressLimitExceeded", "Number of private addresses will exceed limit.")
        subnet = eni.subnet
        new_ips = [self.check_address(subnet, ip) for ip in ips]
        if count:
            new_ips = self.take_addresses([subnet], count)
        new_prefixes = [self.check_prefix(subnet, p) for p in prefixes]
        if prefix_count:
            new_prefixes = self.take_blocks(subnet, prefix_count)
        for ip in new_ips:
            eni.private_ip_addresses.append({"Primary": False, "PrivateIpAddress": ip})
        eni.ipv4_prefixes = list(getattr(eni, "ipv4_prefixes", [])) + [{"Ipv4Prefix": p} for p in new_prefixes]
        ip_items = "".join(f"<item><privateIpAddress>{ip}</privateIpAddress></item>" for ip in new_ips)
        prefix_items = "".join(f"<item><ipv4Prefix>{p}</ipv4Prefix></item>" for p in new_prefixes)
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<AssignPrivateIpAddressesResponse xmlns="{XMLNS}">'
            f"<requestId>{uuid.uuid4()}</requestId><networkInterfaceId>{eni.id}</networkInterfaceId>"
            f"<assignedPrivateIpAddressesSet>{ip_items}</assignedPrivateIpAddressesSet>"
            f"<assignedIpv4PrefixSet>{prefix_items}</assignedIpv4PrefixSet>"
            "<return>true</return></AssignPrivateIpAddressesResponse>"
        )
        return ("ok", body)

    def unassign(self, params):
        eni = self.find_eni(params)
        if eni is None:
            return None
        ips = multi(params, "PrivateIpAddress")
        prefixes = multi(params, "Ipv4Prefix")
        if not ips and not prefixes:
            raise Ec2Error("MissingParameter", "Specify private IP addresses or IPv4 prefixes to unassign.")
        secondaries = {i.get("PrivateIpAddress") for i in eni.private_ip_addresses if not i.get("Primary")}
        if any(ip not in secondaries for ip in ips):
            raise Ec2Error(
                "InvalidParameterValue", f"Some of the specified addresses are not assigned to interface {eni.id}"
            )
        held = {p["Ipv4Prefix"] for p in getattr(eni, "ipv4_prefixes", [])}
        if any(p not in held for p in prefixes):
            raise Ec2Error(
                "InvalidParameterValue", f"Some of the specified prefixes are not assigned to interface {eni.id}"
            )
        eni.private_ip_addresses = [i for i in eni.private_ip_addresses if i.get("PrivateIpAddress") not in ips]
        eni.ipv4_prefixes = [p for p in getattr(eni, "ipv4_prefixes", []) if p["Ipv4Prefix"] not in prefixes]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<UnassignPrivateIpAddressesResponse xmlns="{XMLNS}">'
            f"<requestId>{uuid.uuid4()}</requestId><return>true</return></UnassignPrivateIpAddressesResponse>"
        )
        return ("ok", body)

    def prepare_run(self, params):
        """RunInstances into a full subnet is refused, as EC2 does, before moto draws (it would
        fail half-way with a 500)."""
        subnet_id = single(params, "SubnetId")
        subnet = next((s for s in self.all_subnets() if s.id == subnet_id), None)
        if subnet is None or single(params, "PrivateIpAddress"):
            return
        wanted = count_param(params, "MinCount") or 1
        if self.free_addresses([subnet], wanted) is None:
            raise Ec2Error(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet {subnet.id} has no free addresses to satisfy the request.",
            )

    def prepare_create(self, params):
        """Checks what moto does not, and picks the new ENI's prefixes; moto then makes the ENI,
        drawing its addresses through this model."""
        subnet_id = single(params, "SubnetId")
        subnet = next((s for s in self.all_subnets() if s.id == subnet_id), None)
        if subnet is None:
            return  # moto answers InvalidSubnetID.NotFound
        count = count_param(params, "SecondaryPrivateIpAddressCount")
        prefix_count = count_param(params, "Ipv4PrefixCount")
        prefixes = multi(params, "Ipv4Prefix")
        if prefix_count and prefixes:
            raise Ec2Error("InvalidParameterCombination", "Specify only one of Ipv4PrefixCount and Ipv4Prefixes.")
        primary = single(params, "PrivateIpAddress")
        if primary:
            self.check_address(subnet, primary)
        # Addresses first, as EC2 needs them all: the primary (unless given) and the secondaries.
        needed = count + (0 if primary else 1)
        if needed and self.free_addresses([subnet], needed) is None:
            raise Ec2Error(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet {subnet.id} has no free addresses to satisfy the request.",
            )
        chosen = [self.check_prefix(subnet, p) for p in prefixes]
        if prefix_count:
            chosen = self.take_blocks(subnet, prefix_count)
        # The primary and secondaries moto draws next must still fit beside the prefixes.
        if needed and self.free_addresses([subnet], needed) is None:
            raise Ec2Error(
                "InsufficientFreeAddressesInSubnet",
                f"The specified subnet {subnet.id} has no free addresses beside the prefixes asked for.",
            )
        self.new_eni_prefixes = chosen
