//! BKV family: to be written.
