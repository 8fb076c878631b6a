"""The public names of aiotlink.testing."""

import aiotlink.testing


def test_all_is_sorted_and_resolves() -> None:
    """__all__ is sorted, and every name in it is importable."""
    names = aiotlink.testing.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(aiotlink.testing, name) is not None


def test_the_documented_names_are_exported() -> None:
    """The fake, its result generator, its clock and its records of requests and webhooks."""
    assert set(aiotlink.testing.__all__) == {
        "FakeTransactionLink",
        "GeneratedResult",
        "ManualClock",
        "RecordedRequest",
        "RedisServer",
        "WebhookAttempt",
        "WebhookDelivery",
    }
