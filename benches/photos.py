#!/usr/bin/env python3
"""The benchmarks' 14 photos of 0.2-1.5 MP: seven scikit-image photos (public domain / CC0)
at 0.25 and 1.2 MP, as JPEG quality 90. Usage: benches/photos.py OUT_DIR"""
import os
import sys

import skimage.data
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
base = os.path.dirname(skimage.data.__file__)
photos = ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg"]
for name in photos:
    img = Image.open(os.path.join(base, name)).convert("RGB")
    for target in (0.25e6, 1.2e6):
        scale = (target / (img.width * img.height)) ** 0.5
        size = (round(img.width * scale), round(img.height * scale))
        stem = name.split(".")[0]
        img.resize(size, Image.Resampling.LANCZOS).save(
            f"{out}/{stem}-{size[0]}x{size[1]}.jpg", quality=90)
