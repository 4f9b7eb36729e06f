//! `dice`: the mask-guided grounding loss between the connector's text→patch
//! attention map and each query's region mask ([`crate::ops::dice_loss`]).

use candle_core::{DType, Result, Tensor};

use super::{Average, HostLoss, LossInput};
use crate::model::ConnectorNeeds;
use crate::ops;

/// AGE-VLM's Dice alignment, for any connector that exposes a grounding map.
pub struct DiceLoss;

impl HostLoss for DiceLoss {
    fn name(&self) -> &'static str {
        "dice"
    }

    fn summary(&self) -> &'static str {
        "Dice between the connector's text→patch attention and the query's region mask"
    }

    fn averages_over(&self) -> Average {
        Average::MaskedSamples
    }

    fn reads_region_masks(&self) -> bool {
        true
    }

    fn check(&self, connector: &str, needs: &ConnectorNeeds) -> std::result::Result<(), String> {
        match needs.grounding_map {
            Some(_) => Ok(()),
            None => Err(format!(
                "the Dice loss compares a text→patch attention map with the region masks, and connector `{connector}` exposes none (age does: its blocks' attention; ccra: its `patch` map)"
            )),
        }
    }

    fn compute(&self, input: &LossInput) -> Result<Option<Tensor>> {
        let Some(name) = &input.vlm.needs.grounding_map else {
            candle_core::bail!("the Dice loss needs a connector that exposes a grounding map");
        };
        let map = input.maps.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "the connector declared the grounding map `{name}` but did not produce it"
            ))
        })?;
        let regions = &input.batch.regions;
        // The loss is computed in f32 whatever the compute dtype.
        let map = &map.to_dtype(DType::F32)?;
        let map = if map.rank() == 4 {
            // B×K×S×N: the mean over each sequence's tokens (padding excluded).
            let (b, _k, s, _n) = map.dims4()?;
            let mut weights = vec![0f32; b * s];
            for (i, row) in input.valid.iter().enumerate() {
                let count = row.iter().filter(|&&v| v).count().max(1) as f32;
                for (p, &v) in row.iter().enumerate().take(s) {
                    if v {
                        weights[i * s + p] = 1.0 / count;
                    }
                }
            }
            let weights =
                Tensor::from_vec(weights, (b, 1, s, 1), map.device())?.to_dtype(map.dtype())?;
            map.broadcast_mul(&weights)?.sum(2)?
        } else {
            map.clone()
        };
        let n = *map.dims().last().unwrap_or(&0);
        let mut values = vec![0f32; regions.len() * n];
        for (i, region) in regions.iter().enumerate() {
            if let Some(region) = region {
                if region.len() != n {
                    candle_core::bail!(
                        "a region mask covers {} grid cells, the grounding map `{name}` {n} tokens",
                        region.len()
                    );
                }
                values[i * n..(i + 1) * n].copy_from_slice(region);
            }
        }
        let masks = Tensor::from_vec(values, (regions.len(), n), map.device())?;
        let present: Vec<bool> = regions.iter().map(Option::is_some).collect();
        ops::dice_loss(&map, &masks, &present)
    }
}
