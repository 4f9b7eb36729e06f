#!/usr/bin/env python3
"""Holds a `vlmkit export --format llava-hf` directory against transformers.

    python3 scripts/check-llava-export.py RUN EXPORT_DIR --image IMG [--image IMG2 ...]
        [--question "What color is the circle?"] [--vlmkit target/release/vlmkit]

RUN is the run (or checkpoint) that was exported, EXPORT_DIR what `vlmkit export`
wrote. For each image the script

1. loads EXPORT_DIR with `LlavaForConditionalGeneration.from_pretrained` and
   `AutoProcessor` and refuses any missing, unexpected or mismatched weight;
2. renders the question with the directory's chat template (through the processor);
3. compares `pixel_values` with `vlmkit model preprocess EXPORT_DIR`;
4. compares the logits at every position with `vlmkit model forward RUN` on the
   same `input_ids` and `pixel_values`;
5. compares transformers' greedy answer with `vlmkit infer RUN`.

Needs torch, transformers (4.52 or later; 4.57.6 and 5.x were checked), safetensors
and Pillow. Not run in CI (torch is several GB); see docs/hugging-face.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("export_dir")
    ap.add_argument("--image", action="append", required=True)
    ap.add_argument("--question", default="What color is the circle?")
    ap.add_argument("--vlmkit", default="target/release/vlmkit")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest logit difference allowed, relative to the largest logit",
    )
    ap.add_argument(
        "--float64", action="store_true",
        help="also run transformers in float64, to tell f32 rounding from a real difference",
    )
    args = ap.parse_args()

    print("transformers", transformers.__version__, "torch", torch.__version__)
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(
        args.export_dir, output_loading_info=True
    )
    model = model.float().eval()
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(kind):
            sys.exit(f"{kind}: {info[kind]}")
    print("loaded: no missing, unexpected or mismatched weights")
    processor = transformers.AutoProcessor.from_pretrained(args.export_dir)
    config = json.load(open(os.path.join(args.export_dir, "config.json")))

    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for image_path in args.image:
            image = Image.open(image_path).convert("RGB")
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": args.question}],
                }
            ]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            ids = inputs["input_ids"]
            n_image = int((ids == config["image_token_index"]).sum())
            print(f"{image_path}: prompt {prompt!r}, {ids.shape[1]} tokens ({n_image} image)")

            # Pixel values: the processor against vlmkit's port of it.
            px_path = os.path.join(tmp, "px.safetensors")
            run([args.vlmkit, "model", "preprocess", args.export_dir, "--image", image_path, "--out", px_path])
            ours_px = load_file(px_path)["pixel_values"]
            px_diff = float((ours_px - inputs["pixel_values"]).abs().max())
            print(f"  pixel_values: max |diff| {px_diff:.3g}")

            # Logits on the same inputs.
            in_path = os.path.join(tmp, "in.safetensors")
            out_path = os.path.join(tmp, "out.safetensors")
            save_file(
                {"input_ids": ids.contiguous(), "pixel_values": inputs["pixel_values"].contiguous()},
                in_path,
            )
            run([args.vlmkit, "model", "forward", args.run, "--inputs", in_path, "--out", out_path])
            ours = load_file(out_path)["logits"]
            with torch.no_grad():
                theirs = model(**inputs).logits.float()
            # Export may add a row for `<image>`, which vlmkit never predicts:
            # compare vlmkit's vocabulary.
            width = ours.shape[-1]
            if ours.shape[:-1] != theirs.shape[:-1] or theirs.shape[-1] < width:
                sys.exit(f"  logits: vlmkit {tuple(ours.shape)}, transformers {tuple(theirs.shape)}")
            diff = float((ours - theirs[..., :width]).abs().max())
            scale = float(theirs.abs().max())
            worst = max(worst, diff / scale)
            print(f"  logits {tuple(theirs.shape)}: max |diff| {diff:.3g} (max |logit| {scale:.3g})")
            if args.float64:
                exact_inputs = dict(inputs)
                exact_inputs["pixel_values"] = inputs["pixel_values"].double()
                with torch.no_grad():
                    exact = model.double()(**exact_inputs).logits[..., :width]
                model.float()
                print(
                    f"  against float64 transformers: vlmkit {float((ours.double() - exact).abs().max()):.3g}, "
                    f"float32 transformers {float((theirs[..., :width].double() - exact).abs().max()):.3g}"
                )

            # Greedy answers.
            with torch.no_grad():
                generated = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            theirs_answer = processor.tokenizer.decode(
                generated[0, ids.shape[1]:], skip_special_tokens=True
            ).strip()
            ours_answer = run(
                [args.vlmkit, "infer", args.run, "--image", image_path, args.question,
                 "--max-new-tokens", str(args.max_new_tokens)]
            ).strip()
            same = "same" if ours_answer == theirs_answer else "DIFFERENT"
            print(f"  answer: transformers {theirs_answer!r}, vlmkit {ours_answer!r} ({same})")
            if ours_answer != theirs_answer:
                sys.exit("the greedy answers differ")
    if worst > args.tolerance:
        sys.exit(f"logits differ by {worst:.3g} of the largest logit > {args.tolerance}")
    print(f"ok: logits within {worst:.3g} of the largest logit, answers equal")


if __name__ == "__main__":
    main()
