"""Event-camera codecs and representations (pure numpy/numba; no ROS).

Decoders turn ``event_camera_msgs/EventPacket`` payloads into structured arrays of
:data:`CD_DTYPE` and :data:`TRIGGER_DTYPE` (t in µs of sensor time); :func:`make_decoder` picks
one by the packet's ``encoding``.
"""
from .evt2 import Evt2Decoder, encode_evt2
from .evt3 import Evt3Decoder, Evt3Encoder, encode_evt3
from .legacy import MonoDecoder, TriggerDecoder, encode_mono, encode_trigger
from .libcaer import LibcaerCmpDecoder, LibcaerDecoder, encode_libcaer, encode_libcaer_cmp
from .factory import EventDecoder, make_decoder, supported_encodings
from .represent import EventFrameRenderer, count_image, time_window, voxel_grid
from .types import CD_DTYPE, TRIGGER_DTYPE, DecodedEvents, EventDecodeError

__all__ = [
    "CD_DTYPE",
    "TRIGGER_DTYPE",
    "DecodedEvents",
    "EventDecodeError",
    "EventDecoder",
    "EventFrameRenderer",
    "Evt2Decoder",
    "Evt3Decoder",
    "Evt3Encoder",
    "LibcaerCmpDecoder",
    "LibcaerDecoder",
    "MonoDecoder",
    "TriggerDecoder",
    "count_image",
    "encode_evt2",
    "encode_evt3",
    "encode_libcaer",
    "encode_libcaer_cmp",
    "encode_mono",
    "encode_trigger",
    "make_decoder",
    "supported_encodings",
    "time_window",
    "voxel_grid",
]
