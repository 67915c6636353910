"""Synthetic scenes, event simulation, clocks and video-to-events for tests, training and demos.

* :mod:`.scene` — seeded scenes (:class:`SceneSpec`, :func:`sample_scene`), the caption grammar and
  its :data:`VOCABULARY`, rendering at any resolution (:class:`SceneRenderer`, ``render_frame(s)``);
* :mod:`.esim` — the ESIM/v2e-style event simulator (:class:`EventSimulator`);
* :mod:`.interp` — motion-compensated interpolation between video frames;
* :mod:`.clocks` — event / RGB clock offset, jitter and frame drops;
* :mod:`.packets` — EVT 3.0 packets cut and stamped as the ROS 2 drivers do;
* :mod:`.stream` — :func:`iter_scenes`: frames + packets + ground truth in-process;
* :mod:`.video` — a video file or frame sequence to the same stream;
* :mod:`.bag` — the stream written as a rosbag2 (``cascade-sd make-bag``).

Pure numpy (rosbags only in :mod:`.bag`); never imports rclpy or message packages. Submodules are
imported on demand, so ``import cascade_sd_ros.core.synth.scene`` stays light.
"""
