"""AtomicPusher: TFX's filesystem Pusher, whose versions appear in the serving folder complete or not at all."""

from components.atomic_pusher.component import AtomicPusher

__all__ = ["AtomicPusher"]
