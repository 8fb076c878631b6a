"""Tests of ``aiotlink.testing``, the fake TransactionLink server."""
