//! Rounding modes and the seeded generator behind stochastic rounding.

/// How a value between two representable neighbours is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Round to nearest, ties to the even code (IEEE default).
    NearestEven,
    /// Round to nearest, ties away from zero (C `roundf`).
    NearestAway,
    /// Truncate toward zero.
    TowardZero,
    /// Toward +infinity.
    Up,
    /// Toward -infinity.
    Down,
    /// Stochastic: round up with probability equal to the fractional distance to the lower
    /// neighbour. Implemented as floor(frac_position + u) with u uniform on [0, 1) made of the
    /// top 32 bits of a [`SplitMix64`] draw, i.e. random bits added below the rounding point.
    Stochastic,
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, seedable 64-bit generator. Each draw adds
/// the golden-ratio increment to the state and scrambles it with two xor-shift-multiply rounds.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    #[inline(always)]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1) with 32 random bits (exact in f64 when added to a value with at most
    /// 21 integer bits, so the sum is never rounded).
    #[inline(always)]
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 32) as f64 * (1.0 / 4_294_967_296.0)
    }
}

/// Round a non-negative `t` (a position measured in units of the target spacing) to an integer.
/// `negative` says the original value was negative, which matters for Up and Down.
#[inline(always)]
pub fn round_magnitude(
    t: f64,
    negative: bool,
    mode: Rounding,
    rng: Option<&mut SplitMix64>,
) -> f64 {
    match mode {
        Rounding::NearestEven => t.round_ties_even(),
        Rounding::NearestAway => t.round(),
        Rounding::TowardZero => t.trunc(),
        Rounding::Up => {
            if negative {
                t.trunc()
            } else {
                t.ceil()
            }
        }
        Rounding::Down => {
            if negative {
                t.ceil()
            } else {
                t.trunc()
            }
        }
        Rounding::Stochastic => {
            // Without a generator there is no randomness to use: fall back to nearest-even.
            match rng {
                Some(r) => (t + r.next_unit()).floor(),
                None => t.round_ties_even(),
            }
        }
    }
}
