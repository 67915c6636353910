"""Event-camera codecs and representations (pure numpy/numba; no ROS).

Decoders turn ``event_camera_msgs/EventPacket`` payloads into structured arrays of
:data:`CD_DTYPE` and :data:`TRIGGER_DTYPE` (t in µs of sensor time); :func:`make_decoder` picks
one by the packet's ``encoding``. Hostile input costs only itself: ``time_base`` above
:data:`MAX_TIME_BASE_NS` and ``until_t_us`` outside int64 are EventDecodeErrors, decoded times stay
in 0..:data:`MAX_T_US`, a call's events span at most ``max_span_us`` (default
:data:`DEFAULT_MAX_SPAN_US`, 1 s; the rest counted in ``events_dropped_span``), and time jumps no
counter wrap explains are counted in ``time_resyncs`` instead of shifting the stream for good.
"""

from .evt2 import Evt2Decoder, encode_evt2
from .evt3 import Evt3Decoder, Evt3Encoder, encode_evt3
from .factory import UNFLAGGED_BACKWARD_US, EventDecoder, make_decoder, supported_encodings, warm_up_decoders
from .legacy import MonoDecoder, TriggerDecoder, encode_mono, encode_trigger
from .libcaer import LibcaerCmpDecoder, LibcaerDecoder, encode_libcaer, encode_libcaer_cmp
from .payload import DEFAULT_MAX_SPAN_US, MAX_T_US, MAX_TIME_BASE_NS
from .represent import EventFrameRenderer, count_image, time_window, voxel_grid
from .types import CD_DTYPE, TRIGGER_DTYPE, DecodedEvents, EventDecodeError

__all__ = [
    "CD_DTYPE",
    "DEFAULT_MAX_SPAN_US",
    "MAX_TIME_BASE_NS",
    "MAX_T_US",
    "TRIGGER_DTYPE",
    "UNFLAGGED_BACKWARD_US",
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
    "warm_up_decoders",
    "time_window",
    "voxel_grid",
]
