//! COCO run-length encoded masks (`{"size": [h, w], "counts": …}`), as pycocotools
//! writes them: runs over the mask in column-major order, alternating and starting
//! with outside pixels; `counts` either a list of run lengths or pycocotools'
//! compressed string (6-bit characters from '0', 5 data bits each, bit 0x20 =
//! continues, the last chunk's bit 0x10 = sign; from the fourth run on, each value
//! is the difference to the run two before).

use image::{GrayImage, Luma};
use serde::{Deserialize, Serialize};

use crate::mask::INSIDE;

/// A COCO RLE mask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [u32; 2],
    pub counts: RleCounts,
}

/// The run lengths, as a list or compressed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    Compressed(String),
    Runs(Vec<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("character {found:?} at {at} of the compressed counts is outside '0'..='o'")]
    BadCharacter { found: char, at: usize },
    #[error("the compressed counts end inside a number")]
    Truncated,
    #[error("run {index} is negative ({value})")]
    NegativeRun { index: usize, value: i64 },
    #[error("the runs cover {covered} pixels, the {height}x{width} mask has {expected}")]
    WrongTotal {
        covered: u64,
        expected: u64,
        height: u32,
        width: u32,
    },
}

impl CocoRle {
    /// The run lengths, decompressed.
    pub fn runs(&self) -> Result<Vec<u64>, RleError> {
        match &self.counts {
            RleCounts::Runs(runs) => Ok(runs.clone()),
            RleCounts::Compressed(text) => decompress(text),
        }
    }

    /// The mask as an image (`INSIDE` = inside), `width`×`height`.
    pub fn decode(&self) -> Result<GrayImage, RleError> {
        let [height, width] = self.size;
        let runs = self.runs()?;
        let expected = height as u64 * width as u64;
        let covered: u64 = runs.iter().sum();
        if covered != expected {
            return Err(RleError::WrongTotal {
                covered,
                expected,
                height,
                width,
            });
        }
        let mut mask = GrayImage::new(width, height);
        let mut flat = 0u64;
        for (i, &run) in runs.iter().enumerate() {
            if i % 2 == 1 {
                for p in flat..flat + run {
                    // Column-major: flat index x·h + y.
                    let (x, y) = ((p / height as u64) as u32, (p % height as u64) as u32);
                    mask.put_pixel(x, y, Luma([INSIDE]));
                }
            }
            flat += run;
        }
        Ok(mask)
    }
}

fn decompress(text: &str) -> Result<Vec<u64>, RleError> {
    let bytes = text.as_bytes();
    let mut runs: Vec<i64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0;
        loop {
            let Some(&byte) = bytes.get(p) else {
                return Err(RleError::Truncated);
            };
            if !(b'0'..=b'o').contains(&byte) {
                return Err(RleError::BadCharacter {
                    found: byte as char,
                    at: p,
                });
            }
            let c = (byte - b'0') as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        if runs.len() > 2 {
            x += runs[runs.len() - 2];
        }
        if x < 0 {
            return Err(RleError::NegativeRun {
                index: runs.len(),
                value: x,
            });
        }
        runs.push(x);
    }
    Ok(runs.into_iter().map(|r| r as u64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rle(size: [u32; 2], counts: RleCounts) -> CocoRle {
        CocoRle { size, counts }
    }

    fn rows(mask: &GrayImage) -> Vec<Vec<u8>> {
        (0..mask.height())
            .map(|y| {
                (0..mask.width())
                    .map(|x| (mask.get_pixel(x, y).0[0] != 0) as u8)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn compressed_and_listed_counts_decode_to_the_same_mask() {
        // pycocotools' encoding of a 3x4 mask: columns 1 and 2 partly inside.
        let expected = vec![vec![0, 1, 1, 0], vec![0, 1, 1, 0], vec![0, 0, 1, 0]];
        let listed = rle([3, 4], RleCounts::Runs(vec![3, 2, 1, 3, 3]));
        let compressed = rle([3, 4], RleCounts::Compressed("32112".into()));
        assert_eq!(rows(&listed.decode().unwrap()), expected);
        assert_eq!(rows(&compressed.decode().unwrap()), expected);
    }

    #[test]
    fn multi_character_and_negative_deltas_decompress() {
        let runs = decompress("T3X1:kNnn0R1").unwrap();
        assert_eq!(runs, vec![100, 40, 10, 3, 1000, 37]);
        // A mask that starts inside: a first run of zero outside pixels.
        let starts_inside = rle([4, 1], RleCounts::Compressed("021O".into()));
        assert_eq!(decompress("021O").unwrap(), vec![0, 2, 1, 1]);
        assert_eq!(
            rows(&starts_inside.decode().unwrap()),
            vec![vec![1], vec![1], vec![0], vec![1]]
        );
    }

    #[test]
    fn malformed_counts_are_refused_with_the_reason() {
        let err = decompress("32~").unwrap_err();
        assert_eq!(err, RleError::BadCharacter { found: '~', at: 2 });
        // A continuation bit on the last character.
        assert_eq!(decompress("T").unwrap_err(), RleError::Truncated);
        let short = rle([3, 4], RleCounts::Runs(vec![3, 2]));
        assert!(matches!(
            short.decode().unwrap_err(),
            RleError::WrongTotal {
                covered: 5,
                expected: 12,
                ..
            }
        ));
        // A delta that makes a run negative: 0, 0, 0, then -1 relative to run 1.
        assert!(matches!(
            decompress("000O").unwrap_err(),
            RleError::NegativeRun {
                index: 3,
                value: -1
            }
        ));
    }

    #[test]
    fn records_read_either_form_from_json() {
        let listed: CocoRle =
            serde_json::from_str(r#"{"size":[3,4],"counts":[3,2,1,3,3]}"#).unwrap();
        let compressed: CocoRle =
            serde_json::from_str(r#"{"size":[3,4],"counts":"32112"}"#).unwrap();
        assert_eq!(listed.decode().unwrap(), compressed.decode().unwrap());
    }
}
