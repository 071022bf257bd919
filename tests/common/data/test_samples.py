"""common/data/samples.py: decoding a raw tar sample's image."""
from __future__ import annotations

import io

from PIL import Image

from common.data.samples import decode_image


def test_images_are_decoded_upright_as_their_exif_orientation_says():
    """A camera JPEG kept byte for byte (make_shards does not re-encode): 40×20 stored, orientation 6
    (rotate 90° clockwise to view) → the stream sees it 20×40, as any viewer shows it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 0, 0)).save(stored, format="JPEG", exif=exif.tobytes())
    assert decode_image({"jpg": stored.getvalue()}).size == (20, 40)
