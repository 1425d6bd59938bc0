"""Chat with a Muffin / VisCPM-Chat checkpoint about an image, as the original `muffin/eval/muffin_chat.py` does.

The prompt is the processor's default chat template with a generation prompt: for a checkpoint converted from the
original (Muffin-13B, RLHF-V) that is the original evaluation prompt `"{system}\n###Human: {question}\n<image>\n###"`.
Decoding defaults are the original's (beam 3, repetition penalty 1.1, stop at "###"); the answer is cut at "###" and
stripped up to "Assistant:" (`extract_muffin_answer`).

python examples/muffin/chat.py --model_name_or_path muffin-13b-hf --image photo.jpg --question "What is this?"
python examples/muffin/chat.py --tiny --question "what is in the image ?"      # random tiny model, offline
"""

from __future__ import annotations

import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--image", default=None, help="Image path (default: a synthetic red square).")
    parser.add_argument("--question", default="Describe the image in detail.")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--num_beams", type=int, default=3, help="Muffin's chat demo uses 3.")
    parser.add_argument("--repetition_penalty", type=float, default=1.1)
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    from PIL import Image

    if args.tiny:
        from hf_ext.testing import tiny_muffin

        model, processor = tiny_muffin()
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        import hf_ext  # noqa: F401

        model = AutoModelForImageTextToText.from_pretrained(args.model_name_or_path, dtype="auto").eval()
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    image = Image.open(args.image).convert("RGB") if args.image else Image.new("RGB", (64, 64), (220, 40, 40))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=prompt, return_tensors="pt").to(model.device)
    out = model.generate(
        **inputs,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        do_sample=False,
        repetition_penalty=args.repetition_penalty,
        stop_strings="###",
        tokenizer=processor.tokenizer,
    )
    from hf_ext.models.muffin import extract_muffin_answer

    answer = extract_muffin_answer(
        processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    )
    print(answer)
    return answer


if __name__ == "__main__":
    main()
