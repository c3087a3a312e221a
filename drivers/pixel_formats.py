"""GenICam PFNC pixel formats -> significant bits per channel, from the DELIVERED buffer.

Why a table of our own: saturation flags and auto-exposure use ``2**bit_depth - 1`` as full
scale, so a wrong depth silently hides clipping (12 bits assumed for 8-bit data) or invents it.
The depth must come from the format the buffer says it carries (a producer may accept
``PixelFormat=Mono12`` and still deliver Mono8), packed layouts (``Mono12Packed``, ``Mono10p``,
...) carry as many significant bits as their unpacked twins (harvesters unpacks them to
uint16), and a format not listed here raises `UnsupportedPixelFormat` instead of being guessed
as 8 bits. Names and depths follow the GenICam Pixel Format Naming Convention (PFNC 2.x) and
its GigE Vision legacy names (``...Packed``).
"""

from __future__ import annotations

import re

from drivers.errors import UnsupportedPixelFormat

_MONO_BAYER = re.compile(r"^(?:Mono|Bayer(?:GR|RG|GB|BG))(8|10|12|14|16)(?:p|Packed)?$")
_COLOUR = re.compile(r"^(?:RGB|BGR|RGBa|BGRa)(8|10|12|14|16)(?:p|Packed)?$")
_COLOUR_PACKED_32 = re.compile(r"^(?:RGB|BGR)(10)p32$")  # 3 x 10 bits in one 32-bit word


def pixel_format_bits(pixel_format: str) -> int:
    """Significant bits per channel of `pixel_format` (e.g. 12 for Mono12, Mono12Packed,
    Mono12p, BayerRG12p); `UnsupportedPixelFormat` for anything else (signed, float, YUV...)."""
    name = str(pixel_format)
    for pattern in (_MONO_BAYER, _COLOUR, _COLOUR_PACKED_32):
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    raise UnsupportedPixelFormat(
        f"pixel format {name!r} is not supported (supported: Mono/Bayer 8-16 bit incl. packed "
        "'p'/'Packed' layouts, RGB/BGR(a) 8-16 bit); set pixel_format to one of them"
    )
