//! How every EC2 call is made: a client-side rate limit, a timeout per attempt, and bounded
//! retries with exponential backoff and full jitter on throttling, 5xx answers and transport
//! failures. The SDK's own retries are disabled, so this is the one place that decides.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use enipool_provider::ec2_config::CallPolicy;
use rand::RngExt;
use tokio::sync::Mutex;

/// The delay before retry number `retry` (1 = the first retry), jittered.
pub fn backoff(policy: &CallPolicy, retry: u32) -> Duration {
    let exp = policy.backoff_base.saturating_mul(1u32.checked_shl(retry.saturating_sub(1).min(30)).unwrap_or(u32::MAX));
    let cap = exp.min(policy.backoff_max);
    if cap.is_zero() {
        return cap;
    }
    let half = cap / 2;
    let nanos = rand::rng().random_range(half.as_nanos() as u64..=cap.as_nanos() as u64);
    Duration::from_nanos(nanos)
}

/// What one failed attempt (or call) looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub action: &'static str,
    /// The EC2 error code (`RequestLimitExceeded`, `InvalidParameterValue`, ...), or one of ours:
    /// `Timeout`, `Unreachable`, `BadResponse`, `Request`.
    pub code: String,
    pub message: String,
    /// HTTP status when EC2 answered.
    pub status: Option<u16>,
    pub retryable: bool,
    /// Attempts made before giving up.
    pub attempts: u32,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.action, self.code)?;
        if let Some(s) = self.status {
            write!(f, " (HTTP {s})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// Error codes that mean "slow down".
pub fn is_throttle(code: &str) -> bool {
    matches!(
        code,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" | "TooManyRequestsException"
    )
}

/// Sorts an SDK error into a `CallError`.
pub fn classify<E>(action: &'static str, err: &SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = || {
        let text = DisplayErrorContext(err).to_string();
        // HTML bodies (moto's 500 page) are noise in a log line.
        text.chars().take(300).collect::<String>()
    };
    match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = err.code().unwrap_or("Unknown").to_string();
            let retryable = is_throttle(&code) || status >= 500;
            let message = err.message().map(str::to_string).unwrap_or_else(message);
            CallError { action, code, message, status: Some(status), retryable, attempts: 1 }
        }
        SdkError::TimeoutError(_) => {
            CallError { action, code: "Timeout".into(), message: message(), status: None, retryable: true, attempts: 1 }
        }
        SdkError::DispatchFailure(_) => CallError {
            action,
            code: "Unreachable".into(),
            message: message(),
            status: None,
            retryable: true,
            attempts: 1,
        },
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            CallError {
                action,
                code: "BadResponse".into(),
                message: message(),
                status: Some(status),
                retryable: status >= 500,
                attempts: 1,
            }
        }
        _ => CallError {
            action,
            code: "Request".into(),
            message: message(),
            status: None,
            retryable: false,
            attempts: 1,
        },
    }
}

/// Sees every attempt: for metrics by EC2 action.
pub trait CallObserver: Send + Sync {
    /// One attempt of `action` took `took`; `error` is its error code when it failed.
    fn attempt(&self, action: &str, took: Duration, error: Option<&str>);
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter { rate: rate_per_second, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Waits until a call may be made. A rate of 0 (or less, or not finite) means unlimited.
    pub async fn acquire(&self) {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return;
        }
        // Holding the lock while waiting keeps callers in order.
        let mut s = self.state.lock().await;
        if let Some(wait) = self.take_token(&mut s, Instant::now()) {
            tokio::time::sleep(wait).await;
            *s = (0.0, Instant::now());
        }
    }

    /// The token bucket (`tokens`, as of an instant): takes a token at `now` (`None`), or says
    /// how long until there is one.
    fn take_token(&self, bucket: &mut (f64, Instant), now: Instant) -> Option<Duration> {
        let tokens = (bucket.0 + now.saturating_duration_since(bucket.1).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - tokens) / self.rate))
    }
}

/// Makes calls under a policy.
pub struct Caller {
    pub policy: CallPolicy,
    limiter: RateLimiter,
    observer: Option<Arc<dyn CallObserver>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("policy", &self.policy)
            .field("limiter", &self.limiter)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Caller {
    pub fn new(policy: CallPolicy, observer: Option<Arc<dyn CallObserver>>) -> Caller {
        let limiter = RateLimiter::new(policy.rate_per_second, policy.burst);
        Caller { policy, limiter, observer }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts run out.
    pub async fn call<T, E, F, Fut>(&self, action: &'static str, mut attempt: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let attempts = self.policy.max_attempts.max(1);
        let mut n = 0;
        loop {
            n += 1;
            self.limiter.acquire().await;
            let started = Instant::now();
            let outcome = tokio::time::timeout(self.policy.timeout, attempt()).await;
            let took = started.elapsed();
            let err = match outcome {
                Ok(Ok(v)) => {
                    self.observe(action, took, None);
                    return Ok(v);
                }
                Ok(Err(e)) => classify(action, &e),
                Err(_) => CallError {
                    action,
                    code: "Timeout".into(),
                    message: format!("no answer within {:?}", self.policy.timeout),
                    status: None,
                    retryable: true,
                    attempts: 1,
                },
            };
            self.observe(action, took, Some(&err.code));
            if !err.retryable || n >= attempts {
                tracing::debug!(action, code = %err.code, attempts = n, "EC2 call failed");
                return Err(CallError { attempts: n, ..err });
            }
            let delay = backoff(&self.policy, n);
            tracing::debug!(action, code = %err.code, attempt = n, ?delay, "EC2 call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn observe(&self, action: &str, took: Duration, error: Option<&str>) {
        if let Some(o) = &self.observer {
            o.attempt(action, took, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let p = CallPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..CallPolicy::default()
        };
        for _ in 0..100 {
            let first = backoff(&p, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
            let third = backoff(&p, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
            let late = backoff(&p, 40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000), "{late:?}");
        }
        let zero = CallPolicy { backoff_base: Duration::ZERO, ..p };
        assert_eq!(backoff(&zero, 3), Duration::ZERO);
    }

    #[test]
    fn throttle_codes() {
        assert!(is_throttle("RequestLimitExceeded"));
        assert!(is_throttle("Throttling"));
        assert!(!is_throttle("InvalidParameterValue"));
    }

    #[test]
    fn rate_limiter_spaces_calls_after_the_burst() {
        let l = RateLimiter::new(10.0, 2);
        let t0 = Instant::now();
        let mut bucket = (2.0, t0);
        // Two from the burst at once, then one every 100 ms.
        assert_eq!(l.take_token(&mut bucket, t0), None);
        assert_eq!(l.take_token(&mut bucket, t0), None);
        let wait = l.take_token(&mut bucket, t0).expect("the burst is spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        let wait = l.take_token(&mut bucket, t0 + Duration::from_millis(40)).expect("only 0.4 of a token");
        assert!((wait.as_secs_f64() - 0.06).abs() < 1e-9, "{wait:?}");
        assert_eq!(l.take_token(&mut bucket, t0 + Duration::from_millis(100)), None);
        // Idle time refills up to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.take_token(&mut bucket, later), None);
        assert_eq!(l.take_token(&mut bucket, later), None);
        assert!(l.take_token(&mut bucket, later).is_some());
    }

    #[test]
    fn an_unlimited_rate_never_waits() {
        let unlimited = RateLimiter::new(0.0, 1);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..100 {
            let acquire = std::pin::pin!(unlimited.acquire());
            assert!(acquire.poll(&mut cx).is_ready(), "an unlimited limiter made a caller wait");
        }
    }
}
