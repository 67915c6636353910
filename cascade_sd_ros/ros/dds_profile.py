"""The stage nodes' DDS profile: a short participant lease, so a stage killed outright and
restarted is served again within seconds (see ``fastdds_profile.xml`` for the why).

Fast DDS reads its default profile from the file ``FASTDDS_DEFAULT_PROFILES_FILE`` names (or
``DEFAULT_FASTDDS_PROFILES.xml`` in the working directory) when the first participant is made, so
this runs before ``rclpy.init``. A profile the user chose (either variable, or that file) wins, and
another RMW is left alone: this is a default, not a policy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

PROFILE = Path(__file__).with_name("fastdds_profile.xml")
PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
CWD_PROFILE = "DEFAULT_FASTDDS_PROFILES.xml"


def use_node_profile(environ: MutableMapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """Point Fast DDS at :data:`PROFILE` unless the user chose a profile or another RMW; returns
    the profile now in force for this process (None: not Fast DDS, or the user's own file)."""
    env = os.environ if environ is None else environ
    rmw = env.get("RMW_IMPLEMENTATION", "")
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return None
    if any(env.get(v) for v in PROFILE_VARS) or ((cwd or Path.cwd()) / CWD_PROFILE).exists():
        return None
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)
    return PROFILE
