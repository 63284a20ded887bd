//! Keyframe request (PLI/FIR) coalescing: many subscribers asking for a keyframe of the same
//! publisher stream produce at most one upstream request per interval (RELIABILITY B6).

use std::time::{Duration, Instant};

/// Default minimum spacing of keyframe requests sent to a publisher for one stream: 1 s.
/// Bounds PLI/FIR floods from subscribers (1000/s in → ≤ 1/s out) and publisher encoder load.
pub const DEFAULT_KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Minimum spacing of *engine-originated* keyframe requests for one stream: a leg that starts
/// or switches to this stream (a viewer joins, a participant is brought on stage, a slot changes
/// layer) needs a keyframe now, not up to a full [`DEFAULT_KEYFRAME_REQUEST_INTERVAL`] later.
/// Default 250 ms. These come from control's commands (joins, stage moves, `slot_size`, all
/// rate-limited there), never from a subscriber's RTCP, so a PLI/FIR flood still gets at most
/// one request per interval (RELIABILITY B6); a join ramp or slot changes cost the publisher at
/// most 4 keyframes per second per stream.
pub const URGENT_KEYFRAME_REQUEST_SPACING: Duration = Duration::from_millis(250);

/// Coalesces PLI/FIR requests from many subscribers to at most one request per stream per interval.
#[derive(Debug, Clone)]
pub struct KeyframeRequestCoalescer {
    interval: Duration,
    urgent_spacing: Duration,
    last_sent: Option<Instant>,
    /// A remembered request: when it may be sent.
    pending: Option<Instant>,
}

impl KeyframeRequestCoalescer {
    /// New coalescer allowing one subscriber request per `interval` and one engine request per
    /// `min(interval, URGENT_KEYFRAME_REQUEST_SPACING)`.
    pub fn new(interval: Duration) -> Self {
        KeyframeRequestCoalescer {
            interval,
            urgent_spacing: interval.min(URGENT_KEYFRAME_REQUEST_SPACING),
            last_sent: None,
            pending: None,
        }
    }

    fn ask(&mut self, now: Instant, spacing: Duration) -> bool {
        let due = match self.last_sent {
            None => now,
            Some(t) => t.checked_add(spacing).unwrap_or(t),
        };
        if due <= now {
            self.last_sent = Some(now);
            self.pending = None;
            true
        } else {
            self.pending = Some(self.pending.map_or(due, |p| p.min(due)));
            false
        }
    }

    /// A subscriber (PLI/FIR) wants a keyframe. Returns true if a request must be sent to the publisher now.
    /// A request arriving inside the interval is remembered and fires from poll() when the interval ends (so it is not lost).
    pub fn request(&mut self, now: Instant) -> bool {
        self.ask(now, self.interval)
    }

    /// The engine needs a keyframe for a leg that starts or switches to this stream: like
    /// [`Self::request`] with the shorter [`URGENT_KEYFRAME_REQUEST_SPACING`].
    pub fn request_urgent(&mut self, now: Instant) -> bool {
        self.ask(now, self.urgent_spacing)
    }

    /// A keyframe arrived: a pending request is satisfied and will not fire.
    pub fn on_keyframe(&mut self, _now: Instant) {
        self.pending = None;
    }

    /// True if a remembered request must be sent now (its interval has ended).
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending.is_some_and(|due| due <= now) {
            self.pending = None;
            self.last_sent = Some(now);
            true
        } else {
            false
        }
    }

    /// When [`Self::poll`] will next return true, if a request is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
    }

    /// True if a request is waiting for the interval to end.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
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

    /// A leg that needs a keyframe 300 ms after a subscriber's PLI gets it asked at once (not
    /// 1 s later); a PLI flood still gets one request per interval; urgent requests are spaced.
    #[test]
    fn urgent_requests_use_the_short_spacing() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = KeyframeRequestCoalescer::new(DEFAULT_KEYFRAME_REQUEST_INTERVAL);
        assert!(c.request(t0));
        assert!(!c.request(t0 + ms(300)), "a PLI inside the interval waits");
        assert_eq!(c.poll_timeout(), Some(t0 + ms(1000)));
        assert!(
            c.request_urgent(t0 + ms(300)),
            "a starting leg does not wait for the interval"
        );
        assert!(!c.is_pending(), "the urgent request covers the pending PLI");
        assert!(!c.request_urgent(t0 + ms(400)));
        assert_eq!(c.poll_timeout(), Some(t0 + ms(550)));
        assert!(
            !c.request(t0 + ms(450)),
            "a PLI does not pull the urgent one later"
        );
        assert_eq!(c.poll_timeout(), Some(t0 + ms(550)));
        assert!(c.poll(t0 + ms(550)));
        // a subscriber flood after that: one request per interval, counted from the last one
        let mut sent = 0;
        for i in 1..=99u32 {
            let now = t0 + ms(550) + ms(10) * i;
            sent += u32::from(c.request(now)) + u32::from(c.poll(now));
        }
        assert_eq!(sent, 0);
        assert_eq!(c.poll_timeout(), Some(t0 + ms(1550)));
        // a keyframe satisfies whatever is pending
        c.on_keyframe(t0 + ms(1500));
        assert!(!c.poll(t0 + ms(2000)));
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
