"""Notifications: messages kept in a durable outbox and delivered to Apprise receivers."""
