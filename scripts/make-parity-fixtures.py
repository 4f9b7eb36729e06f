#!/usr/bin/env python3
"""Tiny randomly initialised Hugging Face models and their outputs, for vlmkit's
parity tests (`crates/vlmkit-models/tests/hf_parity.rs`).

Each directory under tests/fixtures/hf/ is a checkpoint as transformers writes it
(config.json, model.safetensors with bf16 weights) plus expected.safetensors: the
inputs (`input_ids` and `attention_mask`, or `pixel_values`), every hidden state
(`hidden_states.{i}`, transformers' indexing) and the logits or
`last_hidden_state`, computed in f32 from the same bf16-representable weights.

The settings are deliberately not the defaults: grouped-query attention, tied
embeddings, Qwen2's q/k/v biases, an explicit head_dim, non-default rope_theta.
HF's own initialisation (std 0.02, norms at 1, biases at 0) would let a missing
bias or a wrong eps pass at 1e-4, so the weights are scrambled to visible sizes.

Environment (not needed by CI, which only reads the committed files):

    python3 -m pip install --target ~/.cache/vlmkit/hfenv torch safetensors numpy
    python3 -m pip install --no-deps --target ~/.cache/vlmkit/tf457-overlay \\
        transformers==4.57.6 tokenizers==0.22.1 huggingface-hub==0.36.2 requests
    python3 -m pip install --no-deps --target ~/.cache/vlmkit/pillow12-overlay pillow==12.1.0
    PYTHONPATH=~/.cache/vlmkit/pillow12-overlay:~/.cache/vlmkit/tf457-overlay:~/.cache/vlmkit/hfenv \\
        python3 scripts/make-parity-fixtures.py

Pillow 12 is the reference for the image processors: Pillow 13 sometimes resizes
vertically first (python-pillow PR 9549), which LLaVA-1.5 and CLIP never saw.

transformers 4.57.6 writes the hub layout (`rope_theta`, `vision_model.` prefixes)
that released checkpoints use; vlmkit reads 5.x's `rope_parameters` too.
"""
import json
import math
import os
import sys

import torch
import transformers as T
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")


def scramble(model, seed):
    """Weights of visible size, rounded to bf16 so the bf16 files hold them exactly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                v = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
            elif "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
            else:
                v = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def save(name, model, inputs, hidden_states, **outputs):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    tensors = {k: v.contiguous() for k, v in inputs.items()}
    for i, h in enumerate(hidden_states):
        tensors[f"hidden_states.{i}"] = h.detach().float().contiguous()
    for key, value in outputs.items():
        tensors[key] = value.detach().float().contiguous().clone()
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"{name}: {len(hidden_states)} hidden states, {size} bytes")


def main():
    print("transformers", T.__version__, "torch", torch.__version__, file=sys.stderr)
    ids = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 2], [3, 4, 5, 6, 7, 8, 9, 10]])
    # The second sample is left-padded by two: the mask must keep it out.
    mask = torch.tensor([[1] * 8, [0, 0] + [1] * 6])
    text = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    language_models = {
        "llama-gqa-rope": (
            T.LlamaConfig,
            T.LlamaForCausalLM,
            dict(text, num_key_value_heads=2, rope_theta=50000.0, tie_word_embeddings=False),
        ),
        "smollm-tied": (
            T.LlamaConfig,
            T.LlamaForCausalLM,
            dict(text, num_key_value_heads=1, rope_theta=100000.0, tie_word_embeddings=True),
        ),
        "mistral-gqa": (
            T.MistralConfig,
            T.MistralForCausalLM,
            dict(text, num_key_value_heads=2, rope_theta=1e6, sliding_window=None, head_dim=16),
        ),
        "qwen2-bias-tied": (
            T.Qwen2Config,
            T.Qwen2ForCausalLM,
            dict(
                text,
                num_key_value_heads=2,
                rope_theta=1e6,
                rms_norm_eps=1e-6,
                tie_word_embeddings=True,
                use_sliding_window=False,
            ),
        ),
    }
    for seed, (name, (config, model_class, settings)) in enumerate(language_models.items()):
        torch.manual_seed(seed)
        model = model_class(config(**settings)).eval()
        scramble(model, seed)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        save(name, model, {"input_ids": ids, "attention_mask": mask}, out.hidden_states, logits=out.logits)

    vision_models()
    image_processors()
    gguf_model()


def image_processors():
    """Pixel values from transformers' (PIL) CLIP and SigLIP processors, LLaVA-1.5's
    pad-to-square in front of CLIP's, and Pillow's bicubic resize alone, on small
    PNGs: a smooth gradient plus noise (so every resampling weight shows), one
    image smaller than the crop (the zero-padding path)."""
    import numpy as np
    import PIL
    from PIL import Image

    assert PIL.__version__.startswith("12."), f"Pillow 12 is the reference (found {PIL.__version__}; 13 may resize vertically first)"
    d = os.path.join(ROOT, "..", "preprocess")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)

    def picture(width, height):
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack(
            [128 + 100 * np.sin(x / 7.0), 128 + 100 * np.cos(y / 5.0), (x * 3 + y * 2) % 256], axis=-1
        )
        noisy = smooth + rng.normal(0, 25, smooth.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")

    images = {"wide": picture(157, 109), "tall": picture(61, 143), "small": picture(23, 17)}
    for name, image in images.items():
        image.save(os.path.join(d, f"{name}.png"))

    def expand2square(image, background):
        # LLaVA-1.5 (llava/train/train.py): the image centred on a square of the mean colour.
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        result = Image.new(image.mode, (side, side), background)
        result.paste(image, ((side - width) // 2, (side - height) // 2))
        return result

    clip = T.CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 40, "width": 40})
    siglip = T.SiglipImageProcessor(size={"height": 36, "width": 36})
    clip.save_pretrained(os.path.join(d, "clip"))
    siglip.save_pretrained(os.path.join(d, "siglip"))
    background = tuple(int(x * 255) for x in clip.image_mean)
    tensors = {}
    for name, image in images.items():
        for processor_name, processor, prepare in [
            ("clip", clip, lambda i: i),
            ("clip-pad", clip, lambda i: expand2square(i, background)),
            ("siglip", siglip, lambda i: i),
        ]:
            pixels = processor(prepare(image), return_tensors="pt")["pixel_values"][0]
            tensors[f"{processor_name}.{name}"] = pixels.float().contiguous()
    for (w, h), (nw, nh) in [((37, 53), (24, 24)), ((13, 7), (40, 23)), ((157, 109), (48, 33)), ((100, 60), (61, 97))]:
        source = picture(w, h)
        source.save(os.path.join(d, f"resize-{w}x{h}.png"))
        resized = np.asarray(source.resize((nw, nh), Image.BICUBIC))
        tensors[f"resize.{w}x{h}.{nw}x{nh}"] = torch.from_numpy(resized.copy())
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    print(f"preprocess: {len(tensors)} expected tensors, {size} bytes")


def vision_models():
    """CLIP (the vision model alone, and the vision half of a CLIPModel), SigLIP
    (no class token, a patch bias, no pre-norm, an image side the patch does not
    divide) and ConvNeXt, on random pixels: every hidden state in transformers'
    indexing (ConvNeXt's in NCHW), and `last_hidden_state`."""
    g = torch.Generator().manual_seed(100)
    clip = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    pixels = torch.randn((2, 3, 32, 32), generator=g)
    models = {
        "clip-vision": (T.CLIPVisionModel(T.CLIPVisionConfig(**clip)), pixels, lambda m: m),
        "clip-full": (
            T.CLIPModel(
                T.CLIPConfig(
                    text_config=dict(
                        vocab_size=64,
                        hidden_size=16,
                        intermediate_size=24,
                        num_hidden_layers=1,
                        num_attention_heads=2,
                        max_position_embeddings=16,
                    ),
                    vision_config=clip,
                    projection_dim=8,
                )
            ),
            pixels,
            lambda m: m.vision_model,
        ),
        "siglip-vision": (
            T.SiglipVisionModel(
                T.SiglipVisionConfig(
                    **dict(clip, image_size=30, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
                )
            ),
            torch.randn((2, 3, 30, 30), generator=g),
            lambda m: m,
        ),
        "convnext": (
            T.ConvNextModel(
                T.ConvNextConfig(
                    num_channels=3,
                    patch_size=4,
                    num_stages=2,
                    hidden_sizes=[8, 16],
                    depths=[1, 2],
                    hidden_act="gelu",
                    layer_norm_eps=1e-6,
                    image_size=32,
                )
            ),
            pixels,
            lambda m: m,
        ),
    }
    for seed, (name, (model, pixel_values, vision)) in enumerate(models.items(), start=10):
        model = model.eval()
        scramble(model, seed)
        with torch.no_grad():
            out = vision(model)(pixel_values=pixel_values, output_hidden_states=True)
        save(
            name,
            model,
            {"pixel_values": pixel_values},
            out.hidden_states,
            last_hidden_state=out.last_hidden_state,
        )


def gguf_model():
    """A tiny LLaMA written as llama.cpp writes GGUF files: q/k rows permuted,
    linear weights in Q4_1, the embedding in Q8_0, norms in F32, no output matrix
    (tied), and a byte-level BPE vocabulary with SmolLM2's `smollm` pre-tokenizer.
    The reference is transformers' own GGUF loader (dequantise, unpermute) and its
    GGUF tokenizer conversion. Needs gguf-py (`pip install gguf`)."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    d = os.path.join(ROOT, "..", "gguf")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tiny-llama.Q4_1.gguf")

    def bytes_to_unicode():  # GPT-2's byte alphabet
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        return [chr(c) for c in cs]

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # "1 2" would merge digits if they were not split one by one; "Ġ t" shows
    # whether a prefix space is added.
    merges = ["Ġ t", "h e", "t he", "1 2", "i s"]
    tokens = specials + bytes_to_unicode() + ["Ġt", "he", "the", "12", "is"]
    vocab = len(tokens)
    heads, kv_heads, layers = 4, 2, 2
    config = T.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(20)
    model = T.LlamaForCausalLM(config).eval()
    scramble(model, 20)

    def permute(w, n_head):  # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_feed_forward_length(96)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(64 // heads)
    w.add_vocab_size(vocab)
    w.add_file_type(3)  # MOSTLY_Q4_1
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    names = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    sd = {k: v.numpy() for k, v in model.state_dict().items()}

    def put(name, array, kind):
        array = array.astype(np.float32)
        if kind == Q.F32:
            w.add_tensor(name, array)
        else:
            w.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)

    put("token_embd.weight", sd["model.embed_tokens.weight"], Q.Q8_0)
    put("output_norm.weight", sd["model.norm.weight"], Q.F32)
    for i in range(layers):
        for hf, g in names.items():
            a = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                a = permute(a, heads)
            if hf == "self_attn.k_proj":
                a = permute(a, kv_heads)
            put(f"blk.{i}.{g}.weight", a, Q.F32 if a.ndim == 1 else Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reference = T.AutoModelForCausalLM.from_pretrained(d, gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    tokenizer = T.AutoTokenizer.from_pretrained(d, gguf_file=os.path.basename(path))
    texts = [
        "the 123 tea is",
        "Hello the12",
        "<|im_start|>user\nis 2+2 the 4?<|im_end|>\n",
        " the\t x",
    ]
    # transformers' conversion uses plain ByteLevel whatever `tokenizer.ggml.pre`
    # says; llama.cpp (llama-vocab.cpp) splits `smollm` text on `\p{N}` first, as
    # SmolLM2's own tokenizer does (digits one by one). The vocabulary, merges and
    # special tokens come from transformers; the pre-tokenizer from llama.cpp.
    plain = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    from tokenizers import Regex, pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    differ = [t for t, a, b in zip(texts, plain, encoded) if a != b]
    assert differ == texts[:2], f"only the digit runs should differ, got {differ}"
    ids = torch.tensor([[1, 50, 60, 70, 80, 2, 260, 263], [3, 4, 5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[1] * 8, [0, 0] + [1] * 6])
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    tensors = {"input_ids": ids, "attention_mask": mask, "logits": out.logits.float().contiguous()}
    for i, h in enumerate(out.hidden_states):
        tensors[f"hidden_states.{i}"] = h.float().contiguous()
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    with open(os.path.join(d, "tokenizer-expected.json"), "w") as f:
        json.dump({"texts": texts, "ids": encoded}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"gguf: {len(out.hidden_states)} hidden states, {size} bytes")


if __name__ == "__main__":
    main()
