"""Synthetic scenes, event simulation, clocks and video-to-events for tests, training and demos.

Pure numpy; never imports rclpy or message packages.
"""
