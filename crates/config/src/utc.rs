//! How a time is written for people: in files, on the command line and in the API's
//! messages, an RFC 3339 UTC timestamp to the second (`2025-01-01T03:00:00Z`). The protocol
//! and the stores keep milliseconds since the Unix epoch.

/// `ms` since the Unix epoch as an RFC 3339 UTC timestamp, to the second
/// (`2025-01-01T03:00:00Z`); a time past what a date can say is written as its milliseconds.
pub fn format_utc(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_utc(u64::MAX),
            format!("{} ms after the Unix epoch", u64::MAX)
        );
    }
}
