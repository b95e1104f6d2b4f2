from halochat.push.fcm import Push, PushService

__all__ = ["Push", "PushService"]
