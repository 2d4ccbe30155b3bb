//! Image streamer integration tests.
