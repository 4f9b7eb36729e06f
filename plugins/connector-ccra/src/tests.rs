//! CCRA against a literal reading of the spec, finite differences, and its
//! invariants.

use super::*;
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_gradients, check_store_gradients, max_abs_diff,
    random_projection, GradCheck,
};
use vlmkit_core::params::{ParamStore, ShapeRecorder};
use vlmkit_plugin::candle_core::{Result, Var};

const B: usize = 2;
const L: usize = 4;
const N: usize = 3;
const DV: usize = 5;
const DT: usize = 6;
const DLLM: usize = 7;
const H: usize = 4;

fn dims() -> CcraDims {
    CcraDims {
        layers: L,
        vision: DV,
        text: DT,
        llm: DLLM,
    }
}

fn small(cfg: CcraConfig) -> CcraConfig {
    CcraConfig {
        d_hidden: H,
        sigma: 0.8,
        kernel_size: 3,
        ..cfg
    }
}

/// Stacked layers, text embeddings and a mask whose second row is padded.
struct Inputs {
    features: VisualFeatures,
    text: TextContext,
}

/// Seeded normal values (tests must not depend on a global RNG).
fn randn(shape: &[usize], std: f64, seed: u64) -> Tensor {
    vlmkit_core::gradcheck::randn(shape, std, seed).unwrap()
}

fn inputs(t: usize, valid: [usize; B]) -> Inputs {
    let dev = Device::Cpu;
    let layers: Vec<Tensor> = (0..L)
        .map(|l| {
            randn(&[B, N, DV], 1.0, 100 + l as u64)
                .affine(1.0 + 0.3 * l as f64, 0.1 * l as f64)
                .unwrap()
        })
        .collect();
    let mut mask = vec![0f64; B * t];
    for (b, &n) in valid.iter().enumerate() {
        for j in 0..n {
            mask[b * t + j] = 1.0;
        }
    }
    Inputs {
        features: VisualFeatures {
            layers,
            layer_ids: (1..=L).collect(),
            cls: None,
            depth: L,
            grid: (1, N),
        },
        text: TextContext {
            embeds: randn(&[B, t, DT], 1.0, 200 + t as u64),
            mask: Tensor::from_vec(mask, (B, t), &dev).unwrap(),
            queries: Vec::new(),
        },
    }
}

fn build(cfg: &CcraConfig, seed: u64) -> (ParamStore, CcraConnector) {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let ccra = CcraConnector::new(cfg, dims(), L - 1, store.init_builder(seed)).unwrap();
    (store, ccra)
}

/// A literal, unoptimised reading of `connectors.md` § ccra, sample by sample,
/// written apart from the module: explicit T×P score matrices, the Gaussian as a
/// padded correlation loop, norms from their definitions.
mod literal {
    use super::*;

    pub struct Weights<'a>(pub &'a ParamStore);

    impl Weights<'_> {
        pub fn get(&self, name: &str) -> Tensor {
            self.0
                .get(name)
                .unwrap_or_else(|| panic!("no weight {name}"))
                .as_tensor()
                .clone()
        }

        /// `x·Wᵀ + b` for a 2-D `x`.
        pub fn linear(&self, prefix: &str, x: &Tensor) -> Result<Tensor> {
            let w = self.get(&format!("{prefix}.weight"));
            let b = self.get(&format!("{prefix}.bias"));
            x.matmul(&w.t()?)?.broadcast_add(&b)
        }
    }

    fn softmax(x: &Tensor) -> Result<Tensor> {
        let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
        e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
    }

    fn gelu(x: &Tensor) -> Result<Tensor> {
        x.gelu_erf()
    }

    /// LayerNorm of every row of a 2-D tensor (affine per column).
    fn layer_norm_rows(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let mu = x.mean_keepdim(1)?;
        let xc = x.broadcast_sub(&mu)?;
        let var = xc.sqr()?.mean_keepdim(1)?;
        xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    /// One N×d map normalised as a whole, affine per channel.
    fn map_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let all = x.flatten_all()?;
        let mu = all.mean_all()?;
        let var = all.broadcast_sub(&mu)?.sqr()?.mean_all()?;
        x.broadcast_sub(&mu)?
            .broadcast_div(&(var + 1e-5)?.sqrt()?)?
            .broadcast_mul(w)?
            .broadcast_add(b)
    }

    /// `α^T((F_t Q)(F K)^T/√h)`, normalised as the config says. `f`: P×d.
    fn text_map(
        w: &Weights,
        stage: &str,
        ft: &Tensor,
        alpha: &Tensor,
        f: &Tensor,
        norm: MapNorm,
    ) -> Result<Tensor> {
        let q = w.linear(&format!("{stage}.q"), ft)?;
        let k = w.linear(&format!("{stage}.k"), f)?;
        let scores = (q.matmul(&k.t()?)? / (H as f64).sqrt())?; // T×P
        let score = alpha.unsqueeze(0)?.matmul(&scores)?.squeeze(0)?; // P
        match norm {
            MapNorm::None => Ok(score),
            MapNorm::Softmax => softmax(&score)? * score.dim(0)? as f64,
        }
    }

    /// Layer weights `ŵ` from descriptors `D` (L×d).
    fn layer_weights(
        cfg: &CcraConfig,
        w: &Weights,
        ft: &Tensor,
        alpha: &Tensor,
        d: &Tensor,
    ) -> Result<Tensor> {
        if !cfg.lwca {
            return Tensor::full(1.0 / L as f64, L, &Device::Cpu);
        }
        let q = w.linear("lwca.q", ft)?;
        let k = w.linear("lwca.k", d)?;
        let scores = (q.matmul(&k.t()?)? / (H as f64).sqrt())?;
        let p = softmax(&alpha.unsqueeze(0)?.matmul(&scores)?.squeeze(0)?)?;
        if !cfg.smoothing {
            return Ok(p);
        }
        let p: Vec<f64> = p.to_vec1()?;
        let half = (cfg.kernel_size / 2) as i64;
        let smoothed: Vec<f64> = (0..L as i64)
            .map(|l| {
                (-half..=half)
                    .filter(|i| (0..L as i64).contains(&(l + i)))
                    .map(|i| {
                        let g = (-((i * i) as f64) / (2.0 * cfg.sigma * cfg.sigma)).exp();
                        g * p[(l + i) as usize]
                    })
                    .sum()
            })
            .collect();
        let total: f64 = smoothed.iter().sum();
        Tensor::from_vec(
            smoothed.iter().map(|s| s / total).collect::<Vec<_>>(),
            L,
            &Device::Cpu,
        )
    }

    /// LWCA on per-layer maps `f` (L×N×d) → `F_sem` (N×d).
    fn lwca(
        cfg: &CcraConfig,
        w: &Weights,
        ft: &Tensor,
        alpha: &Tensor,
        f: &Tensor,
    ) -> Result<Tensor> {
        let wl = layer_weights(cfg, w, ft, alpha, &f.mean(1)?)?;
        let mut fused = f.get(0)?.zeros_like()?;
        for l in 0..L {
            fused = (fused + (f.get(l)? * wl.get(l)?.to_scalar::<f64>()?)?)?;
        }
        let with_mean = fused.broadcast_add(&fused.mean_keepdim(0)?)?;
        layer_norm_rows(
            &with_mean,
            &w.get("lwca.norm.weight"),
            &w.get("lwca.norm.bias"),
        )
    }

    fn pwca_modulate(w: &Weights, f: &Tensor, g: &Tensor) -> Result<Tensor> {
        map_norm(
            &f.broadcast_mul(&(g + 1.0)?.unsqueeze(1)?)?,
            &w.get("pwca.norm.weight"),
            &w.get("pwca.norm.bias"),
        )
    }

    /// CCRA's tokens for sample `b`: (tokens N×d_llm, α).
    pub fn sample(cfg: &CcraConfig, w: &Weights, x: &Inputs, b: usize) -> Result<(Tensor, Tensor)> {
        let t_valid = x.text.mask.get(b)?.sum_all()?.to_scalar::<f64>()? as usize;
        let ft = x.text.embeds.get(b)?.narrow(0, 0, t_valid)?;
        let v = Tensor::stack(
            &x.features
                .layers
                .iter()
                .map(|l| l.get(b))
                .collect::<Result<Vec<_>>>()?,
            0,
        )?; // L×N×d
            // α: single-head self-attention over the real query tokens, then a score.
        let q = w.linear("token_attn.q", &ft)?;
        let k = w.linear("token_attn.k", &ft)?;
        let vv = w.linear("token_attn.v", &ft)?;
        let attn = softmax(&(q.matmul(&k.t()?)? / (H as f64).sqrt())?)?;
        let hh = attn.matmul(&vv)?;
        let alpha = softmax(&w.linear("token_attn.score", &hh)?.squeeze(1)?)?;
        // LPWCA over all (layer, patch) positions.
        let f_lp = if cfg.lpwca {
            let g = text_map(
                w,
                "lpwca",
                &ft,
                &alpha,
                &v.reshape((L * N, DV))?,
                cfg.map_norm,
            )?
            .reshape((L, N))?;
            let modulated = (v.broadcast_mul(&g.unsqueeze(2)?)? + &v)?;
            let per_layer = (0..L)
                .map(|l| {
                    map_norm(
                        &modulated.get(l)?,
                        &w.get("lpwca.norm.weight"),
                        &w.get("lpwca.norm.bias"),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::stack(&per_layer, 0)?
        } else {
            v.clone()
        };
        let f_reg = match (cfg.pwca, cfg.integration) {
            (false, _) => lwca(cfg, w, &ft, &alpha, &f_lp)?,
            (true, Integration::Progressive) => {
                let f_sem = lwca(cfg, w, &ft, &alpha, &f_lp)?;
                let g = text_map(w, "pwca", &ft, &alpha, &f_sem, cfg.map_norm)?;
                pwca_modulate(w, &f_sem, &g)?
            }
            (true, Integration::Shuffled) => {
                let g = text_map(w, "pwca", &ft, &alpha, &f_lp.mean(0)?, cfg.map_norm)?;
                let per_layer = (0..L)
                    .map(|l| pwca_modulate(w, &f_lp.get(l)?, &g))
                    .collect::<Result<Vec<_>>>()?;
                lwca(cfg, w, &ft, &alpha, &Tensor::stack(&per_layer, 0)?)?
            }
            (true, Integration::Decoupled) => {
                let f_a = lwca(cfg, w, &ft, &alpha, &f_lp)?;
                let mean = f_lp.mean(0)?;
                let g = text_map(w, "pwca", &ft, &alpha, &mean, cfg.map_norm)?;
                let f_b = pwca_modulate(w, &mean, &g)?;
                layer_norm_rows(
                    &(f_a + f_b)?,
                    &w.get("lwca.norm.weight"),
                    &w.get("lwca.norm.bias"),
                )?
            }
        };
        let fused = Tensor::cat(&[&f_reg, &v.get(L - 1)?], 1)?;
        let hidden = gelu(&w.linear("proj.0", &fused)?)?;
        Ok((w.linear("proj.2", &hidden)?, alpha))
    }
}

/// Every setting the paper studies, one at a time.
fn variants() -> Vec<(&'static str, CcraConfig)> {
    let base = small(CcraConfig::default());
    vec![
        ("default", base.clone()),
        (
            "map_norm none",
            CcraConfig {
                map_norm: MapNorm::None,
                ..base.clone()
            },
        ),
        (
            "no lpwca",
            CcraConfig {
                lpwca: false,
                ..base.clone()
            },
        ),
        (
            "no lwca",
            CcraConfig {
                lwca: false,
                ..base.clone()
            },
        ),
        (
            "no smoothing",
            CcraConfig {
                smoothing: false,
                ..base.clone()
            },
        ),
        (
            "no pwca",
            CcraConfig {
                pwca: false,
                ..base.clone()
            },
        ),
        (
            "shuffled",
            CcraConfig {
                integration: Integration::Shuffled,
                ..base.clone()
            },
        ),
        (
            "decoupled",
            CcraConfig {
                integration: Integration::Decoupled,
                ..base.clone()
            },
        ),
        (
            "wide kernel",
            CcraConfig {
                kernel_size: 7,
                sigma: 2.0,
                ..base
            },
        ),
    ]
}

#[test]
fn matches_a_literal_reading_of_the_spec_in_every_variant() {
    let x = inputs(5, [5, 3]);
    for (name, cfg) in variants() {
        let (store, ccra) = build(&cfg, 7);
        let out = ccra.forward(&x.features, Some(&x.text)).unwrap();
        let tokens = out.tokens.unwrap();
        for b in 0..B {
            let (expected, alpha) =
                literal::sample(&cfg, &literal::Weights(&store), &x, b).unwrap();
            let diff = max_abs_diff(&tokens.get(b).unwrap(), &expected).unwrap();
            assert!(diff < 1e-8, "{name}, sample {b}: tokens differ by {diff}");
            let got_alpha = out.maps["alpha"]
                .get(b)
                .unwrap()
                .narrow(0, 0, alpha.dim(0).unwrap())
                .unwrap();
            assert!(
                max_abs_diff(&got_alpha, &alpha).unwrap() < 1e-12,
                "{name}: alpha"
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    let x = inputs(4, [4, 2]);
    for (name, cfg) in variants() {
        let (store, ccra) = build(&cfg, 11);
        let loss = || {
            let out = ccra.forward(&x.features, Some(&x.text))?;
            random_projection(out.tokens.as_ref().unwrap(), 1)
        };
        check_store_gradients(
            &store,
            loss,
            &GradCheck {
                max_elems: 4,
                ..GradCheck::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_every_param_learns(&store, loss, &cfg.softmax_invariant_params())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn inputs_get_gradients_too() {
    // The vision encoder and the text embeddings train through CCRA.
    let x = inputs(4, [4, 3]);
    let cfg = small(CcraConfig::default());
    let (_store, ccra) = build(&cfg, 3);
    let layers: Vec<Var> = x
        .features
        .layers
        .iter()
        .map(|l| Var::from_tensor(l).unwrap())
        .collect();
    let text = Var::from_tensor(&x.text.embeds).unwrap();
    let features = VisualFeatures {
        layers: layers.iter().map(|v| v.as_tensor().clone()).collect(),
        ..x.features.clone()
    };
    let ctx = TextContext {
        embeds: text.as_tensor().clone(),
        mask: x.text.mask.clone(),
        queries: Vec::new(),
    };
    let refs: Vec<(&str, &Var)> = vec![
        ("hs[1]", &layers[0]),
        ("hs[4]", &layers[3]),
        ("text", &text),
    ];
    check_gradients(
        &refs,
        || {
            random_projection(
                ccra.forward(&features, Some(&ctx))?
                    .tokens
                    .as_ref()
                    .unwrap(),
                2,
            )
        },
        &GradCheck {
            max_elems: 6,
            ..GradCheck::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn padded_query_tokens_change_nothing() {
    let cfg = small(CcraConfig::default());
    let (_store, ccra) = build(&cfg, 5);
    let short = inputs(3, [3, 2]);
    // The same sample with two padding tokens of arbitrary content appended.
    let pad = randn(&[B, 2, DT], 5.0, 300);
    let long = TextContext {
        embeds: Tensor::cat(&[&short.text.embeds, &pad], 1).unwrap(),
        mask: Tensor::cat(
            &[
                &short.text.mask,
                &Tensor::zeros((B, 2), DType::F64, &Device::Cpu).unwrap(),
            ],
            1,
        )
        .unwrap(),
        queries: Vec::new(),
    };
    let a = ccra.forward(&short.features, Some(&short.text)).unwrap();
    let b = ccra.forward(&short.features, Some(&long)).unwrap();
    let diff = max_abs_diff(a.tokens.as_ref().unwrap(), b.tokens.as_ref().unwrap()).unwrap();
    assert!(diff < 1e-12, "padding moved the tokens by {diff}");
    let padded_alpha = b.maps["alpha"].narrow(1, 3, 2).unwrap();
    assert_eq!(
        padded_alpha
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        0.0
    );
}

#[test]
fn maps_have_their_shapes_and_normalisations() {
    let x = inputs(4, [4, 4]);
    let (_store, ccra) = build(&small(CcraConfig::default()), 9);
    let maps = ccra.forward(&x.features, Some(&x.text)).unwrap().maps;
    let names: Vec<&str> = maps.keys().map(String::as_str).collect();
    assert_eq!(names, ["alpha", "layer", "layer_raw", "lp", "patch"]);
    assert_eq!(maps["alpha"].dims(), &[B, 4]);
    assert_eq!(maps["lp"].dims(), &[B, L, N]);
    assert_eq!(maps["layer_raw"].dims(), &[B, L]);
    assert_eq!(maps["layer"].dims(), &[B, L]);
    assert_eq!(maps["patch"].dims(), &[B, N]);
    let sums = |t: &Tensor| -> Vec<f64> {
        t.flatten_from(1)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    for s in sums(&maps["alpha"])
        .into_iter()
        .chain(sums(&maps["layer"]))
        .chain(sums(&maps["layer_raw"]))
    {
        assert!((s - 1.0).abs() < 1e-12);
    }
    // Mean-one weights: |P|·softmax sums to |P|.
    for s in sums(&maps["lp"]) {
        assert!((s - (L * N) as f64).abs() < 1e-9);
    }
    for s in sums(&maps["patch"]) {
        assert!((s - N as f64).abs() < 1e-9);
    }
}

#[test]
fn ablated_stages_have_no_weights_and_uniform_layers_without_lwca() {
    let cfg = small(CcraConfig {
        lpwca: false,
        lwca: false,
        pwca: false,
        ..CcraConfig::default()
    });
    let (store, ccra) = build(&cfg, 2);
    let names: Vec<String> = store.vars().into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().all(|n| !n.starts_with("lpwca.")
            && !n.starts_with("pwca.")
            && !n.starts_with("lwca.q")
            && !n.starts_with("lwca.k")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "lwca.norm.weight"),
        "Eq. 10 still applies"
    );
    let x = inputs(3, [3, 3]);
    let maps = ccra.forward(&x.features, Some(&x.text)).unwrap().maps;
    let uniform = Tensor::full(0.25f64, (B, L), &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&maps["layer"], &uniform).unwrap(), 0.0);
    assert!(
        !maps.contains_key("lp") && !maps.contains_key("patch") && !maps.contains_key("layer_raw")
    );
}

#[test]
fn weight_names_and_reference_size() {
    // CLIP ViT-L/14-336 (24 blocks, d_v 1024) + Vicuna-7B (4096), h = 128, counted
    // from shapes alone.
    let recorder = ShapeRecorder::new();
    CcraConnector::new(
        &CcraConfig::default(),
        CcraDims {
            layers: 24,
            vision: 1024,
            text: 4096,
            llm: 4096,
        },
        23,
        recorder.builder(),
    )
    .unwrap();
    let shapes = recorder.shapes();
    let count = |prefix: &str| -> usize {
        shapes
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    let attention: usize = ["token_attn.", "lpwca.", "lwca.", "pwca."]
        .iter()
        .map(|p| count(p))
        .sum();
    // Six text projections 4096→128, three vision projections 1024→128, the score
    // 128→1, three norms of 2·1024: the paper's ≈3.55M.
    assert_eq!(
        attention,
        6 * (4096 * 128 + 128) + 3 * (1024 * 128 + 128) + 129 + 3 * 2048
    );
    assert_eq!(attention, 3_546_369);
    assert_eq!(count("proj."), 2048 * 4096 + 4096 + 4096 * 4096 + 4096);
    let names: Vec<&str> = shapes.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "lpwca.k.bias",
            "lpwca.k.weight",
            "lpwca.norm.bias",
            "lpwca.norm.weight",
            "lpwca.q.bias",
            "lpwca.q.weight",
            "lwca.k.bias",
            "lwca.k.weight",
            "lwca.norm.bias",
            "lwca.norm.weight",
            "lwca.q.bias",
            "lwca.q.weight",
            "proj.0.bias",
            "proj.0.weight",
            "proj.2.bias",
            "proj.2.weight",
            "pwca.k.bias",
            "pwca.k.weight",
            "pwca.norm.bias",
            "pwca.norm.weight",
            "pwca.q.bias",
            "pwca.q.weight",
            "token_attn.k.bias",
            "token_attn.k.weight",
            "token_attn.q.bias",
            "token_attn.q.weight",
            "token_attn.score.bias",
            "token_attn.score.weight",
            "token_attn.v.bias",
            "token_attn.v.weight",
        ]
    );
    assert_eq!(shapes["lpwca.norm.weight"], [1024]);
    assert_eq!(shapes["proj.0.weight"], [4096, 2048]);
}

#[test]
fn settings_are_validated_with_reasons() {
    let even = CcraConfig {
        kernel_size: 4,
        ..CcraConfig::default()
    };
    let (key, message) = even.validate().unwrap_err();
    assert_eq!(key, "kernel_size");
    assert!(
        message.contains("odd") && message.contains('4'),
        "{message}"
    );
    let (key, _) = CcraConfig {
        sigma: 0.0,
        ..CcraConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(key, "sigma");
    let (key, _) = CcraConfig {
        d_hidden: 0,
        ..CcraConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(key, "d_hidden");
}

#[test]
fn gaussian_smoothing_of_known_distributions() {
    use crate::ccra::{smooth, smoothing_matrix};
    let a = (-0.5f64).exp(); // g(±1) with σ = 1
    let matrix = Tensor::from_vec(smoothing_matrix(4, 3, 1.0), (4, 4), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let p = Tensor::new(&[[0f64, 1., 0., 0.], [1., 0., 0., 0.]], &Device::Cpu).unwrap();
    let w = smooth(&p, &matrix).unwrap().to_vec2::<f64>().unwrap();
    // A peak inside spreads to both neighbours; at the edge the zero padding
    // loses the outer half and the renormalisation restores the sum.
    let inner = [a, 1.0, a, 0.0].map(|v| v / (1.0 + 2.0 * a));
    let edge = [1.0, a, 0.0, 0.0].map(|v| v / (1.0 + a));
    for (got, want) in w[0].iter().zip(inner).chain(w[1].iter().zip(edge)) {
        assert!((got - want).abs() < 1e-6, "{w:?}");
    }
    // A kernel of 1 leaves the weights as they are.
    let identity = smoothing_matrix(4, 1, 1.0);
    assert_eq!(
        identity,
        [1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.]
    );
}

#[test]
fn softmax_maps_are_mean_one_and_raw_maps_are_the_scores() {
    use crate::ccra::normalise_map;
    let score = Tensor::new(&[[0f64, 3f64.ln()]], &Device::Cpu).unwrap();
    let g = normalise_map(&score, MapNorm::Softmax)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    assert!(
        (g[0][0] - 0.5).abs() < 1e-12 && (g[0][1] - 1.5).abs() < 1e-12,
        "{g:?}"
    );
    let raw = normalise_map(&score, MapNorm::None).unwrap();
    assert_eq!(max_abs_diff(&raw, &score).unwrap(), 0.0);
}

#[test]
fn each_switch_changes_what_it_names() {
    let x = inputs(4, [4, 2]);
    let run = |cfg: CcraConfig| {
        let (_store, ccra) = build(&small(cfg), 13);
        ccra.forward(&x.features, Some(&x.text)).unwrap()
    };
    let base = run(CcraConfig::default());
    // Without smoothing the layer weights are the raw softmax.
    let unsmoothed = run(CcraConfig {
        smoothing: false,
        ..CcraConfig::default()
    });
    assert_eq!(
        max_abs_diff(&unsmoothed.maps["layer"], &unsmoothed.maps["layer_raw"]).unwrap(),
        0.0
    );
    assert!(max_abs_diff(&base.maps["layer"], &base.maps["layer_raw"]).unwrap() > 1e-3);
    // The same weights (seeded by name) in another order give other tokens, and
    // the maps that do not depend on the order stay the same.
    let tokens = |o: &ConnectorOutput| o.tokens.clone().unwrap();
    for integration in [Integration::Shuffled, Integration::Decoupled] {
        let other = run(CcraConfig {
            integration,
            ..CcraConfig::default()
        });
        assert!(
            max_abs_diff(&tokens(&other), &tokens(&base)).unwrap() > 1e-3,
            "{integration:?}"
        );
        assert_eq!(
            max_abs_diff(&other.maps["lp"], &base.maps["lp"]).unwrap(),
            0.0
        );
        assert_eq!(
            max_abs_diff(&other.maps["alpha"], &base.maps["alpha"]).unwrap(),
            0.0
        );
    }
    // Each ablation changes the tokens.
    for cfg in [
        CcraConfig {
            lpwca: false,
            ..CcraConfig::default()
        },
        CcraConfig {
            lwca: false,
            ..CcraConfig::default()
        },
        CcraConfig {
            pwca: false,
            ..CcraConfig::default()
        },
        CcraConfig {
            map_norm: MapNorm::None,
            ..CcraConfig::default()
        },
    ] {
        let other = run(cfg.clone());
        assert!(
            max_abs_diff(&tokens(&other), &tokens(&base)).unwrap() > 1e-3,
            "{cfg:?}"
        );
    }
}
