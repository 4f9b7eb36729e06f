//! Python's `random` (MT19937 seeded by `init_by_array`), as far as MMMU's
//! evaluator uses it: it calls `random.seed(42)` at import and
//! `random.choice(options)` for a reply it cannot read, so its number depends
//! on Python's exact stream.

const N: usize = 624;
const M: usize = 397;

pub(crate) struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a seed below 2³²: `init_by_array([seed])`.
    pub fn seed(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = 19_650_218;
        for i in 1..N {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        let key = [seed];
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            state[i] = (state[i] ^ (state[i - 1] ^ (state[i - 1] >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                state[0] = state[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            state[i] = (state[i]
                ^ (state[i - 1] ^ (state[i - 1] >> 30)).wrapping_mul(1_566_083_941))
            .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                state[0] = state[N - 1];
                i = 1;
            }
        }
        state[0] = 0x8000_0000;
        Self { state, index: N }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            for k in 0..N {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % N] & 0x7fff_ffff);
                let mut next = self.state[(k + M) % N] ^ (y >> 1);
                if y & 1 == 1 {
                    next ^= 0x9908_b0df;
                }
                self.state[k] = next;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.getrandbits(k)` for 1 ≤ k ≤ 32.
    fn bits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `random.choice(seq)` for a sequence of `len` (≥ 1) items: its index.
    pub fn choice(&mut self, len: usize) -> usize {
        let n = len as u32;
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.bits(k);
            if r < n {
                return r as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python 3.11: `random.seed(42); [random.getrandbits(32) for _ in range(5)]`.
    #[test]
    fn stream_matches_python() {
        let mut random = PyRandom::seed(42);
        let first: Vec<u32> = (0..5).map(|_| random.next_u32()).collect();
        assert_eq!(
            first,
            [2746317213, 478163327, 107420369, 3184935163, 1181241943]
        );
    }

    /// `random.seed(42); [random.choice('ABCD') for _ in range(20)]`, and for 'ABCDE'.
    #[test]
    fn choices_match_python() {
        let letters = |len: usize| {
            let mut random = PyRandom::seed(42);
            (0..20)
                .map(|_| (b'A' + random.choice(len) as u8) as char)
                .collect::<String>()
        };
        assert_eq!(letters(4), "AACBBBAADAAABBABDBDC");
        assert_eq!(letters(5), "AACBBBAEAEDAAABBEEAE");
        assert_eq!(letters(2), "AABAAAAABAAAAAAABABB");
    }
}
