//! The simulated network: per-link latency, packet loss, one-way blocks
//! (asymmetric partitions) and stream bandwidth. All randomness comes from
//! the simulator's seeded RNG, so the same seed gives the same network.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::RngExt;

/// How long a datagram or a stream segment takes from one node to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always the same, in µs.
    Fixed(u64),
    /// Uniform between two bounds, in µs.
    Uniform(u64, u64),
    /// Log-normal around a median (µs) with a shape σ, capped at 100× the
    /// median: a LAN with an occasional slow packet.
    LogNormal {
        /// Median, µs.
        median_us: u64,
        /// Shape.
        sigma: f64,
    },
}

impl Latency {
    fn sample(&self, rng: &mut StdRng) -> u64 {
        match *self {
            Latency::Fixed(us) => us,
            Latency::Uniform(lo, hi) => {
                if hi <= lo {
                    lo
                } else {
                    rng.random_range(lo..=hi)
                }
            }
            Latency::LogNormal { median_us, sigma } => {
                // Box–Muller: one standard normal from two uniforms.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = median_us as f64 * (sigma * z).exp();
                v.clamp(1.0, median_us as f64 * 100.0) as u64
            }
        }
    }
}

/// The network's settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Delay of every datagram and stream segment.
    pub latency: Latency,
    /// Share of datagrams lost, 0..=1 (streams are reliable).
    pub loss: f64,
    /// Stream bandwidth per connection and direction, bytes per second.
    pub bandwidth: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Latency::Uniform(200, 800),
            loss: 0.0,
            bandwidth: 100_000_000,
        }
    }
}

/// The live network: settings plus the links cut right now.
pub(super) struct Net {
    pub(super) cfg: NetConfig,
    /// (from, to): traffic from `from` to `to` is dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// Side of each node in a two-sided partition (`None`: no partition).
    sides: Option<Vec<bool>>,
}

impl Net {
    pub(super) fn new(cfg: NetConfig) -> Net {
        Net {
            cfg,
            blocked: BTreeSet::new(),
            sides: None,
        }
    }

    /// Whether anything sent from `from` reaches `to` now.
    pub(super) fn connected(&self, from: usize, to: usize) -> bool {
        if self.blocked.contains(&(from, to)) {
            return false;
        }
        match &self.sides {
            Some(sides) => sides.get(from) == sides.get(to),
            None => true,
        }
    }

    /// The delay of one datagram, or `None` when it is lost or cut off.
    pub(super) fn datagram(&self, rng: &mut StdRng, from: usize, to: usize) -> Option<u64> {
        if !self.connected(from, to) {
            return None;
        }
        if self.cfg.loss > 0.0 && rng.random::<f64>() < self.cfg.loss {
            return None;
        }
        Some(self.cfg.latency.sample(rng))
    }

    /// The delay of a stream segment of `len` bytes (latency plus its time
    /// on the wire).
    pub(super) fn segment(&self, rng: &mut StdRng, len: usize) -> u64 {
        let wire = (len as u128 * 1_000_000 / u128::from(self.cfg.bandwidth.max(1))) as u64;
        self.cfg.latency.sample(rng) + wire
    }

    /// Cuts traffic from `from` to `to` (one way).
    pub(super) fn block(&mut self, from: usize, to: usize) {
        self.blocked.insert((from, to));
    }

    /// Restores traffic from `from` to `to`.
    pub(super) fn unblock(&mut self, from: usize, to: usize) {
        self.blocked.remove(&(from, to));
    }

    /// Splits the nodes in two sides; `side[i]` says which side node i is on.
    pub(super) fn partition(&mut self, sides: Vec<bool>) {
        self.sides = Some(sides);
    }

    /// Ends a two-sided partition.
    pub(super) fn heal(&mut self) {
        self.sides = None;
    }

    /// Keeps the partition's sides as long as the node list: nodes added
    /// later join side `false`.
    pub(super) fn grow(&mut self, n: usize) {
        if let Some(sides) = &mut self.sides {
            sides.resize(n, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn loss_and_blocks_drop_datagrams() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut net = Net::new(NetConfig {
            latency: Latency::Fixed(500),
            loss: 0.3,
            bandwidth: 1_000_000,
        });
        let delivered = (0..10_000)
            .filter(|_| net.datagram(&mut rng, 0, 1).is_some())
            .count();
        assert!((6_500..7_500).contains(&delivered), "{delivered}");
        net.cfg.loss = 0.0;
        net.block(0, 1);
        assert_eq!(net.datagram(&mut rng, 0, 1), None);
        assert_eq!(net.datagram(&mut rng, 1, 0), Some(500), "one way only");
        net.unblock(0, 1);
        net.partition(vec![true, false]);
        assert!(!net.connected(0, 1) && !net.connected(1, 0));
        net.heal();
        assert!(net.connected(0, 1));
        // 1 MB/s: 1,000 bytes take 1 ms on the wire.
        assert_eq!(net.segment(&mut rng, 1_000), 1_500);
    }

    #[test]
    fn latency_samples_stay_in_their_bounds() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..1_000 {
            let u = Latency::Uniform(100, 300).sample(&mut rng);
            assert!((100..=300).contains(&u));
            let l = Latency::LogNormal {
                median_us: 400,
                sigma: 0.5,
            }
            .sample(&mut rng);
            assert!((1..=40_000).contains(&l));
        }
    }
}
