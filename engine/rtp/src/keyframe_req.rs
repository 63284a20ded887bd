//! Keyframe request (PLI/FIR) coalescing: many subscribers asking for a keyframe of the same
//! publisher stream produce at most one upstream request per interval (RELIABILITY B6).

use std::time::{Duration, Instant};

/// Default minimum spacing of keyframe requests sent to a publisher for one stream: 1 s.
/// Bounds PLI/FIR floods from subscribers (1000/s in → ≤ 1/s out) and publisher encoder load.
pub const DEFAULT_KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Coalesces PLI/FIR requests from many subscribers to at most one request per stream per interval.
#[derive(Debug, Clone)]
pub struct KeyframeRequestCoalescer {
    interval: Duration,
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeRequestCoalescer {
    /// New coalescer allowing one request per `interval`.
    pub fn new(interval: Duration) -> Self {
        KeyframeRequestCoalescer {
            interval,
            last_sent: None,
            pending: false,
        }
    }

    fn may_send(&self, now: Instant) -> bool {
        match self.last_sent {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= self.interval,
        }
    }

    /// A subscriber (or the engine) wants a keyframe. Returns true if a request must be sent to the publisher now.
    /// A request arriving inside the interval is remembered and fires from poll() when the interval ends (so it is not lost).
    pub fn request(&mut self, now: Instant) -> bool {
        if self.may_send(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A keyframe arrived: a pending request is satisfied and will not fire.
    pub fn on_keyframe(&mut self, _now: Instant) {
        self.pending = false;
    }

    /// True if a remembered request must be sent now (its interval has ended).
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.may_send(now) {
            self.pending = false;
            self.last_sent = Some(now);
            true
        } else {
            false
        }
    }

    /// When [`Self::poll`] will next return true, if a request is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        // `pending` is only set while `last_sent` is Some.
        self.last_sent
            .map(|t| t.checked_add(self.interval).unwrap_or(t))
    }

    /// True if a request is waiting for the interval to end.
    pub fn is_pending(&self) -> bool {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundred_requests_in_one_second() {
        let t0 = Instant::now();
        let mut c = KeyframeRequestCoalescer::new(DEFAULT_KEYFRAME_REQUEST_INTERVAL);
        let mut sent = 0;
        for i in 0..100u32 {
            let now = t0 + Duration::from_millis(10) * i;
            if c.request(now) {
                sent += 1;
            }
            if c.poll(now) {
                sent += 1;
            }
        }
        assert_eq!(sent, 1);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(!c.poll(t0 + Duration::from_millis(999)));
        assert!(c.poll(t0 + Duration::from_secs(1)));
        assert!(!c.poll(t0 + Duration::from_secs(1)));
        assert!(!c.poll(t0 + Duration::from_secs(5)));
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn keyframe_cancels_pending() {
        let t0 = Instant::now();
        let mut c = KeyframeRequestCoalescer::new(Duration::from_millis(500));
        assert!(c.request(t0));
        assert!(!c.request(t0 + Duration::from_millis(100)));
        assert!(c.is_pending());
        c.on_keyframe(t0 + Duration::from_millis(200));
        assert!(!c.poll(t0 + Duration::from_secs(1)));
        // after the interval a request goes out immediately
        assert!(c.request(t0 + Duration::from_millis(500)));
        assert!(!c.request(t0 + Duration::from_millis(999)));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(c.poll(t0 + Duration::from_secs(1)));
        // the fired poll restarts the interval
        assert!(!c.request(t0 + Duration::from_millis(1499)));
    }

    #[test]
    fn zero_interval_always_sends() {
        let t0 = Instant::now();
        let mut c = KeyframeRequestCoalescer::new(Duration::ZERO);
        assert!(c.request(t0));
        assert!(c.request(t0));
        assert!(!c.poll(t0));
    }
}
