//! Calendar days as plain integers. The fold compares millions of dates, so they are parsed
//! once from the first ten characters of a FHIR `date` or `dateTime` into days since
//! 1970-01-01; time of day and zone are deliberately dropped (segmentation works in days).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{Date, Month};

/// A calendar day, counted from 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(i32);

impl Day {
    /// Day 0, 1970-01-01.
    pub(crate) const EPOCH: Day = Day(0);

    /// The day of a `time::Date`.
    pub fn from_date(date: Date) -> Self {
        Day(date.to_julian_day()
            - Date::from_calendar_date(1970, Month::January, 1).map_or(0, |d| d.to_julian_day()))
    }

    /// The `time::Date` of this day.
    pub(crate) fn to_date(self) -> Date {
        let epoch =
            Date::from_calendar_date(1970, Month::January, 1).map_or(0, |d| d.to_julian_day());
        Date::from_julian_day(epoch + self.0).unwrap_or(Date::MIN)
    }

    /// Parses the day out of a FHIR `date` or `dateTime` (`YYYY-MM-DD…`). A bare year or
    /// year-month is read as its first day, as FHIR search does for period starts.
    pub fn parse_fhir(value: &str) -> Option<Self> {
        let bytes = value.as_bytes();
        let number = |range: std::ops::Range<usize>| -> Option<u32> {
            let part = bytes.get(range)?;
            part.iter().try_fold(0u32, |acc, b| {
                b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
            })
        };
        let year = number(0..4)?;
        let month = if bytes.len() >= 7 { number(5..7)? } else { 1 };
        let day = if bytes.len() >= 10 { number(8..10)? } else { 1 };
        let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
        let date =
            Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?)
                .ok()?;
        Some(Self::from_date(date))
    }

    /// Days from `self` to `later` (negative when `later` is earlier).
    pub(crate) fn days_until(self, later: Day) -> i32 {
        later.0 - self.0
    }

    /// This day moved by `days`.
    pub(crate) fn plus_days(self, days: i32) -> Day {
        Day(self.0 + days)
    }

    /// Whole years from `self` (a birth date) to `on`, as ages are counted.
    pub(crate) fn years_until(self, on: Day) -> i32 {
        let (born, on) = (self.to_date(), on.to_date());
        let mut years = on.year() - born.year();
        if (on.month() as u8, on.day()) < (born.month() as u8, born.day()) {
            years -= 1;
        }
        years
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let date = self.to_date();
        write!(
            f,
            "{:04}-{:02}-{:02}",
            date.year(),
            date.month() as u8,
            date.day()
        )
    }
}

impl std::str::FromStr for Day {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.len() != 10 {
            return Err(format!("`{value}` is not a date; write it as YYYY-MM-DD"));
        }
        Day::parse_fhir(value)
            .ok_or_else(|| format!("`{value}` is not a valid date; write it as YYYY-MM-DD"))
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dates_and_datetimes_to_the_same_day() {
        let day = Day::parse_fhir("2025-03-04").expect("date");
        assert_eq!(Day::parse_fhir("2025-03-04T23:59:00+02:00"), Some(day));
        assert_eq!(day.to_string(), "2025-03-04");
        assert_eq!(Day::parse_fhir("1970-01-01"), Some(Day::EPOCH));
        assert_eq!(Day::parse_fhir("2025"), Day::parse_fhir("2025-01-01"));
    }

    #[test]
    fn refuses_what_is_not_a_date() {
        for bad in ["", "20x5-01-01", "2025-13-01", "2025-02-30", "abcd"] {
            assert_eq!(Day::parse_fhir(bad), None, "{bad}");
        }
        assert!("2025-1-1".parse::<Day>().is_err());
    }

    #[test]
    fn counts_age_in_whole_years() {
        let born: Day = "2000-06-15".parse().expect("day");
        assert_eq!(born.years_until("2026-06-14".parse().expect("day")), 25);
        assert_eq!(born.years_until("2026-06-15".parse().expect("day")), 26);
    }
}
