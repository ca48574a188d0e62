//! `IdempotencyKeys`: what makes a non-idempotent call (create-domain,
//! backup-domain) safe to repeat. A caller names the intended effect with a
//! key; the first call with that key runs, and every repeat with the same key
//! and the same request gets the first call's outcome instead of a second
//! create. A repeat while the first still runs waits for it.
//!
//! Outcomes are kept in this process for a TTL, up to a number of keys: the
//! service has no database, so a key is known only to the replica that saw
//! it. A failure whose outcome is unknown (a timeout, a dropped connection) is
//! not kept as an answer: the repeat runs again and is told, so it can take
//! "already exists" as its own success.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{CallError, VirtualminError};

/// Longest key accepted.
const MAX_KEY_BYTES: usize = 128;

/// A SHA-256 of the request a key was first used with.
pub type RequestFingerprint = [u8; 32];

/// The fingerprint of a request given as its fields, in a fixed order;
/// each field is length-prefixed so that no two field lists collide.
#[must_use]
pub fn fingerprint(fields: &[&str]) -> RequestFingerprint {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for field in fields {
        context.update(&(field.len() as u64).to_be_bytes());
        context.update(field.as_bytes());
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// Checks a caller's key: 1 to 128 printable ASCII characters.
pub fn check_key(key: &str) -> Result<(), VirtualminError> {
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !printable {
        return Err(VirtualminError::InvalidArgument {
            field: "idempotency_key",
            reason: format!("must be 1 to {MAX_KEY_BYTES} printable ASCII characters without spaces"),
        });
    }
    Ok(())
}

/// How long keys live and how many are kept.
#[derive(Clone, Copy, Debug)]
pub struct KeyLimits {
    /// How long a finished outcome is answered.
    pub ttl: Duration,
    /// Most keys kept at once; a new key beyond it is refused.
    pub max_keys: usize,
}

type Outcome<T> = Result<T, CallError>;

#[derive(Debug)]
enum Slot<T> {
    /// The first call runs; repeats wait for this channel to hold its outcome.
    Running(watch::Receiver<Option<Outcome<T>>>),
    /// The outcome, answered to repeats until `expires_at`.
    Done { outcome: Outcome<T>, expires_at: Instant },
    /// The call ended without knowing whether it took effect.
    Unknown { expires_at: Instant },
}

#[derive(Debug)]
struct Entry<T> {
    fingerprint: RequestFingerprint,
    slot: Slot<T>,
}

/// Outcomes of keyed calls of one kind. Clones share the keys.
#[derive(Debug)]
pub struct IdempotencyKeys<T> {
    /// A std `Mutex`: held to look up or record a key, never across an await.
    entries: Arc<Mutex<HashMap<String, Entry<T>>>>,
}

impl<T> Clone for IdempotencyKeys<T> {
    fn clone(&self) -> Self {
        Self { entries: self.entries.clone() }
    }
}

impl<T> Default for IdempotencyKeys<T> {
    fn default() -> Self {
        Self { entries: Arc::new(Mutex::new(HashMap::new())) }
    }
}

/// What a call with a key must do.
enum Claim<T> {
    /// Run the operation; `after_unknown_outcome` when an earlier run with this key ended unknown.
    Run { sender: watch::Sender<Option<Outcome<T>>>, after_unknown_outcome: bool },
    /// Another call with this key runs: wait for its outcome.
    Wait(watch::Receiver<Option<Outcome<T>>>),
    /// Answer this.
    Answer(Outcome<T>),
}

impl<T: Clone + Send + Sync + 'static> IdempotencyKeys<T> {
    /// Runs `operation` once per `key`: the first call runs it (to the end,
    /// even if that caller goes away), repeats with the same `fingerprint`
    /// get its outcome. `operation` is told whether an earlier run with the
    /// key ended with an unknown outcome. `refuse` builds the error of a
    /// refused key (reused for another request, or too many keys).
    pub async fn run<F, Fut>(
        &self,
        key: &str,
        fingerprint: RequestFingerprint,
        limits: KeyLimits,
        refuse: impl FnOnce(VirtualminError) -> CallError,
        operation: F,
    ) -> Outcome<T>
    where
        F: FnOnce(bool) -> Fut,
        Fut: Future<Output = Outcome<T>> + Send + 'static,
    {
        let claim = match self.claim(key, fingerprint, limits) {
            Ok(claim) => claim,
            Err(error) => return Err(refuse(error)),
        };
        let mut receiver = match claim {
            Claim::Answer(outcome) => return outcome,
            Claim::Wait(receiver) => receiver,
            Claim::Run { sender, after_unknown_outcome } => {
                let receiver = sender.subscribe();
                let operation = operation(after_unknown_outcome);
                let keys = self.clone();
                let key = key.to_owned();
                let task = async move {
                    let outcome = operation.await;
                    keys.record(&key, &outcome, limits.ttl);
                    sender.send_replace(Some(outcome));
                };
                // The create goes on if the caller hangs up, so its outcome is known to the repeat.
                match mesh_kit::correlation::current() {
                    Some(context) => drop(tokio::spawn(mesh_kit::correlation::scope(context, task))),
                    None => drop(tokio::spawn(task)),
                }
                receiver
            }
        };
        let outcome = match receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(refuse(VirtualminError::Internal { reason: "keyed operation ended without an outcome".to_owned() }))
        })
    }

    fn claim(
        &self,
        key: &str,
        fingerprint: RequestFingerprint,
        limits: KeyLimits,
    ) -> Result<Claim<T>, VirtualminError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut after_unknown_outcome = false;
        if let Some(entry) = entries.get(key) {
            let live = match &entry.slot {
                Slot::Running(_) => true,
                Slot::Done { expires_at, .. } | Slot::Unknown { expires_at } => *expires_at > now,
            };
            if live {
                if entry.fingerprint != fingerprint {
                    return Err(VirtualminError::IdempotencyKeyReused);
                }
                match &entry.slot {
                    Slot::Running(receiver) => return Ok(Claim::Wait(receiver.clone())),
                    Slot::Done { outcome, .. } => return Ok(Claim::Answer(outcome.clone())),
                    Slot::Unknown { .. } => after_unknown_outcome = true,
                }
            }
        } else if entries.len() >= limits.max_keys {
            entries.retain(|_, entry| match &entry.slot {
                Slot::Running(_) => true,
                Slot::Done { expires_at, .. } | Slot::Unknown { expires_at } => *expires_at > now,
            });
            if entries.len() >= limits.max_keys {
                return Err(VirtualminError::TooManyIdempotencyKeys {
                    max_keys: limits.max_keys,
                    retry_after: limits.ttl.min(Duration::from_secs(60)),
                });
            }
        }
        let (sender, receiver) = watch::channel(None);
        entries.insert(key.to_owned(), Entry { fingerprint, slot: Slot::Running(receiver) });
        Ok(Claim::Run { sender, after_unknown_outcome })
    }

    fn record(&self, key: &str, outcome: &Outcome<T>, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = entries.get_mut(key) else { return };
        let expires_at = Instant::now() + ttl;
        entry.slot = match outcome {
            Err(error) if error.error.is_transient() => Slot::Unknown { expires_at },
            outcome => Slot::Done { outcome: outcome.clone(), expires_at },
        };
    }

    /// Keys kept now, running and expired ones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// True when no key is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::SystemTime;

    use super::*;
    use crate::error::ErrorContext;

    const LIMITS: KeyLimits = KeyLimits { ttl: Duration::from_secs(60), max_keys: 2 };

    fn call_error(error: VirtualminError) -> CallError {
        CallError {
            error,
            context: Box::new(ErrorContext {
                operation: "create-domain",
                server_id: "vm1".into(),
                server_hostname: String::new(),
                timestamp: SystemTime::now(),
                correlation_id: String::new(),
                sanitized_params: String::new(),
            }),
        }
    }

    async fn counted(keys: &IdempotencyKeys<u32>, key: &str, request: &str, runs: &Arc<AtomicU32>) -> Outcome<u32> {
        let runs = runs.clone();
        keys.run(key, fingerprint(&[request]), LIMITS, call_error, move |_| async move {
            Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_outcome_without_running_again() {
        let keys = IdempotencyKeys::default();
        let runs = Arc::new(AtomicU32::new(0));
        assert_eq!(counted(&keys, "k1", "a.com", &runs).await.unwrap(), 1);
        assert_eq!(counted(&keys, "k1", "a.com", &runs).await.unwrap(), 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(counted(&keys, "k2", "a.com", &runs).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn concurrent_repeats_wait_for_the_first() {
        let keys = IdempotencyKeys::default();
        let runs = Arc::new(AtomicU32::new(0));
        let outcomes = futures_util::future::join_all((0..5).map(|_| counted(&keys, "k", "a.com", &runs))).await;
        assert!(outcomes.iter().all(|outcome| outcome.as_ref().ok() == Some(&1)), "{outcomes:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_key_reused_for_another_request_is_refused() {
        let keys = IdempotencyKeys::default();
        let runs = Arc::new(AtomicU32::new(0));
        counted(&keys, "k", "a.com", &runs).await.unwrap();
        let error = counted(&keys, "k", "b.com", &runs).await.unwrap_err();
        assert_eq!(error.error, VirtualminError::IdempotencyKeyReused);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_beyond_the_limit_are_refused_until_some_expire() {
        let keys = IdempotencyKeys::default();
        let runs = Arc::new(AtomicU32::new(0));
        counted(&keys, "k1", "a", &runs).await.unwrap();
        counted(&keys, "k2", "a", &runs).await.unwrap();
        let error = counted(&keys, "k3", "a", &runs).await.unwrap_err();
        assert_eq!(error.error.reason(), "TOO_MANY_IDEMPOTENCY_KEYS");
        let short = KeyLimits { ttl: Duration::ZERO, max_keys: 2 };
        let expired = IdempotencyKeys::<u32>::default();
        for key in ["k1", "k2", "k3"] {
            let outcome = expired.run(key, fingerprint(&["a"]), short, call_error, |_| async { Ok(7) }).await;
            assert_eq!(outcome.unwrap(), 7, "expired keys make room for {key}");
        }
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_run_again_and_says_so() {
        let keys = IdempotencyKeys::<u32>::default();
        let timeout = VirtualminError::Timeout {
            server_id: "vm1".into(),
            program: "create-domain",
            timeout: Duration::from_secs(1),
        };
        let first = keys.run("k", fingerprint(&["a"]), LIMITS, call_error, |after| async move {
            assert!(!after);
            Err(call_error(timeout))
        });
        assert_eq!(first.await.unwrap_err().error.reason(), "VIRTUALMIN_TIMEOUT");
        let second =
            keys.run("k", fingerprint(&["a"]), LIMITS, call_error, |after| async move { Ok(u32::from(after)) });
        assert_eq!(second.await.unwrap(), 1, "the repeat ran, told of the unknown outcome");
        let definite = VirtualminError::DomainAlreadyExists { domain: "a".into() };
        let third =
            keys.run("k", fingerprint(&["a"]), LIMITS, call_error, |_| async move { Err(call_error(definite)) });
        assert_eq!(third.await.unwrap(), 1, "a known outcome is answered, not run again");
    }

    #[test]
    fn keys_are_printable_and_bounded() {
        check_key("0f8c2b1e-6a3d-4c55-9e21-7b0d5f3a9c10").unwrap();
        for bad in ["", "has space", "line\nbreak", &"x".repeat(129)] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprints_separate_fields() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["a", "b"]), fingerprint(&["a", "b"]));
    }
}
