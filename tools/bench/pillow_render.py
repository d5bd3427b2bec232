"""Pillow side of `optimem bench render`: draws the same laid-out lines, with the same font at the same pixel size, and
reports pages per second on one core. Input: a JSON file written by the Rust side (see src/cli/bench.rs)."""
import json
import sys
import time

from PIL import Image, ImageDraw, ImageFont


def main(spec_path):
    spec = json.load(open(spec_path))
    font = ImageFont.truetype(spec["font"], size=spec["font_px"])
    pages = spec["pages"]
    size = spec["pixels"]
    # Warm-up: FreeType glyph caches, as the Rust side warms its mask cache.
    for page in pages:
        draw_page(page, size, font)
    runs = []
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        for page in pages:
            draw_page(page, size, font)
        runs.append(len(pages) / (time.perf_counter() - t0))
    print(json.dumps({"pages_per_s": runs}))


def draw_page(page, size, font):
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    for line in page:
        d.text((line["x"], line["y"]), line["text"], font=font, fill=0, anchor="ls")
    return img


if __name__ == "__main__":
    main(sys.argv[1])
