//! The open-file limit: a load generator with thousands of connections needs more than the
//! usual soft limit of 1024 descriptors, so the binary raises the soft limit to the hard one.

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit and returns the new soft limit.
#[cfg(unix)]
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // `rlim_t` is u64 on Linux but not on every Unix.
    #[allow(clippy::unnecessary_cast)]
    Ok(limit.rlim_cur as u64)
}

/// Elsewhere there is nothing to raise.
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    Ok(0)
}
