//! The fast path of [`super::extract_str`]: a hand-written scanner over one resource's JSON
//! that fills the same [`Scan`] the serde visitors fill, for the shapes real exports have. Most
//! of a line is skipped, and a string's end (in a line without backslashes, its next quote) is
//! read from a bitmap of the quotes of 64 bytes at a time, made with SIMD compares, instead of
//! by serde's character loop and visitor calls; that is where the time went.
//!
//! It keeps no error messages: it answers `None` for anything it is not sure of, and the serde
//! path then reads the line, with its errors. So it gives up on malformed JSON of any kind, an
//! escape or a `null` in an element it keeps, a key given twice, a total (Claim,
//! ExplanationOfBenefit), nesting deeper than serde allows, or a shape serde would coerce (an
//! array where a Coding object belongs). Debug builds read every line both ways and compare.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::value::{BorrowedStrDeserializer, Error as ValueError};
use wide::u8x16;

use super::{Codes, Key, LiteCoding, LiteIdentifier, LiteLink, LiteRef, Scan, Text};
use crate::model::mapping::Field;
use crate::model::plan::Plan;

/// Deeper than this, serde_json's recursion limit (128) is near: give up and let it decide.
const MAX_DEPTH: u32 = 100;

/// Scans `text`, or `None` when the serde path must read it.
pub(super) fn scan<'a>(plan: &Plan, text: &'a str) -> Option<Scan<'a>> {
    // One look at the whole line rather than one per string: a control character (JSON allows
    // a tab between tokens, and none in a string) leaves the line to serde, and where the line
    // has no backslash, every string ends at its next quote.
    if text.bytes().fold(u8::MAX, u8::min) < 0x20 {
        return None;
    }
    let mut c = Cursor::new(text);
    let mut scan = Scan::default();
    let mut seen = 0u64;
    c.object(|c, key| {
        let key = Key::deserialize(BorrowedStrDeserializer::<ValueError>::new(key)).ok()?;
        if key != Key::Other {
            // serde overwrites a repeated key, or adds its codes twice: rare enough to leave
            // to it.
            let bit = 1u64 << (key as u32);
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
        }
        match key {
            Key::ResourceType => scan.resource_type = Some(c.text()?),
            Key::Id => scan.id = Some(c.text()?),
            Key::Subject => scan.subject = c.reference()?,
            Key::Patient => scan.patient = c.reference()?,
            Key::EffectiveDateTime | Key::EffectiveInstant => scan.effective = Some(c.text()?),
            Key::EffectivePeriod => [scan.effective, _] = c.period()?,
            Key::Issued => scan.issued = Some(c.text()?),
            Key::BillablePeriod => [scan.billable_start, _] = c.period()?,
            Key::Created => scan.created = Some(c.text()?),
            Key::Status => scan.status = Some(c.text()?),
            // Numbers are left to serde, which reads them exactly as the serde path does.
            Key::Total | Key::ValueQuantity | Key::ValueInteger => return None,
            Key::Period => [scan.start, scan.end] = c.period()?,
            Key::OnsetDateTime => scan.onset = Some(c.text()?),
            Key::OnsetPeriod => [scan.onset_start, _] = c.period()?,
            Key::RecordedDate => scan.recorded = Some(c.text()?),
            Key::BirthDate => scan.birth_date = Some(c.text()?),
            Key::Identifier => scan.identifiers = c.identifiers()?,
            Key::Link => scan.links = c.links()?,
            Key::Meta => [scan.last_updated] = c.fields(&["lastUpdated"])?,
            Key::Class => scan.codes.add(plan, Field::Class, c.coding()?),
            Key::Type => c.concepts(plan, Field::Type, &mut scan.codes)?,
            Key::ServiceType => c.concept(plan, Field::ServiceType, &mut scan.codes)?,
            Key::ReasonCode => c.concepts(plan, Field::ReasonCode, &mut scan.codes)?,
            Key::Code => c.concept(plan, Field::Code, &mut scan.codes)?,
            Key::Category => c.concepts(plan, Field::Category, &mut scan.codes)?,
            Key::ClinicalStatus => c.concept(plan, Field::ClinicalStatus, &mut scan.codes)?,
            Key::VerificationStatus => {
                c.concept(plan, Field::VerificationStatus, &mut scan.codes)?
            }
            Key::DeceasedBoolean => scan.deceased = Some(c.boolean()?),
            Key::DeceasedDateTime => scan.deceased_at = Some(c.text()?),
            Key::Active => scan.active = Some(c.boolean()?),
            Key::Other => c.skip(0)?,
        }
        Some(())
    })?;
    c.blank();
    (c.at == text.len()).then_some(scan)
}

/// A position in one resource's JSON text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
    /// The text has no backslash, so no string has an escape.
    plain: bool,
    /// Where the quotes are in the run of the text the cursor is in.
    quotes: Quotes,
}

/// The quotes of one run of [`RUN`] bytes of a text, as bits: the cursor only moves forward,
/// so each run is looked at once, and a string's end is one shift away.
#[derive(Default)]
struct Quotes {
    /// Which run (its start over [`RUN`]), plus one; 0 for none yet.
    run: usize,
    /// Bit `i` is set where byte `i` of the run is a quote.
    bits: u64,
}

/// The bytes one [`Quotes`] covers.
const RUN: usize = 64;

impl<'a> Cursor<'a> {
    /// At the start of `text`.
    fn new(text: &'a str) -> Self {
        Self {
            text,
            at: 0,
            plain: memchr::memchr(b'\\', text.as_bytes()).is_none(),
            quotes: Quotes::default(),
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// Steps over whitespace.
    fn blank(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.blank();
        self.bytes().get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string without escapes, borrowed from the text. Inlined: it runs for every string of
    /// every resource, and a call's own entry and exit cost about what finding the end does.
    #[inline(always)]
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        // Where the text has a backslash, the quote found may be an escaped one: either way the
        // string has an escape, and is serde's.
        let end = self.quote(start)?;
        if !self.plain && self.bytes()[start..end].contains(&b'\\') {
            return None;
        }
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// Where the first quote at or after `from` is.
    fn quote(&mut self, from: usize) -> Option<usize> {
        let mut at = from;
        loop {
            let run = at / RUN;
            if self.quotes.run != run + 1 {
                let start = run * RUN;
                let bytes = self.bytes().get(start..)?;
                self.quotes = Quotes {
                    run: run + 1,
                    bits: quote_bits(&bytes[..bytes.len().min(RUN)]),
                };
            }
            let bits = self.quotes.bits >> (at % RUN);
            if bits != 0 {
                return Some(at + bits.trailing_zeros() as usize);
            }
            at = (run + 1) * RUN;
        }
    }

    /// A string element kept as it is.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        self.str().map(Cow::Borrowed)
    }

    /// Steps over a string, escapes included, checking them as JSON.
    fn skip_str(&mut self) -> Option<()> {
        if self.plain {
            return self.str().map(drop);
        }
        self.eat(b'"')?;
        loop {
            let rest = &self.bytes()[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Some(());
            }
            match self.bytes().get(self.at)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    let hex = self.bytes().get(self.at + 1..self.at + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.at += 5;
                }
                _ => return None,
            }
        }
    }

    /// Steps over any value, checking it as JSON.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => self.object(|c, _| c.skip(depth + 1)),
            b'[' => self.array(|c| c.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// `true` or `false`.
    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number as JSON writes it: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let digits = |at: &mut usize| {
            let start = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > start
        };
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        if b.get(at) == Some(&b'0') {
            at += 1;
        } else if !digits(&mut at) {
            return None;
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = b.get(at) {
                at += 1;
            }
            if !digits(&mut at) {
                return None;
            }
        }
        self.at = at;
        Some(())
    }

    /// An object, calling `each` with the cursor on every member's value.
    fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |c| {
            let key = c.str()?;
            c.eat(b':')?;
            each(c, key)
        })
    }

    /// An array, calling `each` with the cursor on every element.
    fn array(&mut self, each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', each)
    }

    /// What lies between `open` and `close`, separated by commas, each item read by `each`.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            each(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object of which only the string members `names` are kept, in that order; giving up
    /// on a repeated one, as a derived serde struct fails on it.
    fn fields<const N: usize>(&mut self, names: &[&str; N]) -> Option<[Option<Cow<'a, str>>; N]> {
        let mut found: [Option<Cow<'a, str>>; N] = [const { None }; N];
        self.object(|c, key| match names.iter().position(|n| *n == key) {
            Some(i) if found[i].is_none() => {
                found[i] = Some(c.text()?);
                Some(())
            }
            Some(_) => None,
            None => c.skip(1),
        })?;
        Some(found)
    }

    /// A Reference's `reference`.
    fn reference(&mut self) -> Option<Option<Cow<'a, str>>> {
        let [reference] = self.fields(&["reference"])?;
        Some(reference)
    }

    /// A Period's start and end.
    fn period(&mut self) -> Option<[Option<Cow<'a, str>>; 2]> {
        self.fields(&["start", "end"])
    }

    fn coding(&mut self) -> Option<LiteCoding<'a>> {
        let [system, code] = self.fields(&["system", "code"])?;
        Some(LiteCoding {
            system: system.map(Text),
            code: code.map(Text),
        })
    }

    /// One CodeableConcept, its codings added to `codes` as they come.
    fn concept(&mut self, plan: &Plan, field: Field, codes: &mut Codes) -> Option<()> {
        self.object(|c, key| {
            if key != "coding" {
                return c.skip(1);
            }
            c.array(|c| {
                codes.add(plan, field, c.coding()?);
                Some(())
            })
        })
    }

    /// An array of CodeableConcepts, or one (`type` is an array on Encounter, one concept on
    /// Claim).
    fn concepts(&mut self, plan: &Plan, field: Field, codes: &mut Codes) -> Option<()> {
        if self.peek()? == b'[' {
            self.array(|c| c.concept(plan, field, codes))
        } else {
            self.concept(plan, field, codes)
        }
    }

    fn identifiers(&mut self) -> Option<Vec<LiteIdentifier<'a>>> {
        let mut all = Vec::new();
        self.array(|c| {
            let [system, value] = c.fields(&["system", "value"])?;
            all.push(LiteIdentifier {
                system: system.map(Text),
                value: value.map(Text),
            });
            Some(())
        })?;
        Some(all)
    }

    fn links(&mut self) -> Option<Vec<LiteLink<'a>>> {
        let mut all = Vec::new();
        self.array(|c| {
            let (mut other, mut kind) = (None, None);
            c.object(|c, key| match key {
                "other" if other.is_none() => {
                    other = Some(LiteRef {
                        reference: c.reference()?.map(Text),
                    });
                    Some(())
                }
                "type" if kind.is_none() => {
                    kind = Some(Text(c.text()?));
                    Some(())
                }
                "other" | "type" => None,
                _ => c.skip(1),
            })?;
            all.push(LiteLink { other, kind });
            Some(())
        })?;
        Some(all)
    }
}

/// Bit `i` set where `bytes[i]` is a quote, for up to [`RUN`] bytes: sixteen compared at once.
fn quote_bits(bytes: &[u8]) -> u64 {
    // Only a text's last run is short: it alone is copied, padded, to compare it whole.
    let mut padded = [0u8; RUN];
    let run = if bytes.len() == RUN {
        bytes
    } else {
        padded[..bytes.len()].copy_from_slice(bytes);
        &padded
    };
    let quote = u8x16::splat(b'"');
    run.chunks_exact(16).enumerate().fold(0, |bits, (i, part)| {
        let part: [u8; 16] = part.try_into().unwrap_or_default();
        // `move_mask` gives one bit per byte, in its low 16 bits.
        let found = u64::from(u8x16::new(part).cmp_eq(quote).move_mask() as u16);
        bits | found << (16 * i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::types::ResourceKind;
    use crate::model::load::load_str;
    use crate::source::synth::{Bills, CodeFlavor, SynthOptions};

    fn plan(text: &str) -> Plan {
        let as_of = "2026-01-01".parse().expect("day");
        Plan::compile(load_str(text).expect("model"), as_of).expect("plan")
    }

    fn paijat_sote() -> Plan {
        plan(include_str!("../../../mappings/paijat-sote.yaml"))
    }

    fn synthetic(clients: u64, flavor: CodeFlavor) -> Vec<(ResourceKind, String)> {
        let opts = SynthOptions {
            clients,
            seed: 5,
            flavor,
            as_of: "2026-01-01".parse().expect("day"),
            area: None,
            bills: Bills::Claims,
            records: true,
            shapes: false,
        };
        crate::source::synth::lines(&opts).collect()
    }

    /// The scanner reads every synthetic line but the Claims and the scores (their numbers are
    /// serde's), and reads it as serde does: `extract_str` compares the two in debug builds.
    #[test]
    fn synthetic_lines_are_scanned_as_serde_reads_them() {
        for (plan, flavor) in [
            (paijat_sote(), CodeFlavor::Finnish),
            (paijat_sote(), CodeFlavor::International),
            (
                plan(include_str!("../../../mappings/helsinki-oral-health.yaml")),
                CodeFlavor::Finnish,
            ),
        ] {
            let lines = synthetic(200, flavor);
            for kind in [
                ResourceKind::Condition,
                ResourceKind::Observation,
                ResourceKind::EpisodeOfCare,
            ] {
                assert!(lines.iter().any(|(k, _)| *k == kind), "{kind}");
            }
            for (kind, line) in &lines {
                let scanned = scan(&plan, line).is_some();
                let numbers = *kind == ResourceKind::Claim || line.contains("\"valueQuantity\"");
                assert_eq!(scanned, !numbers, "{kind}");
                if plan.reads_kind(*kind) {
                    assert!(super::super::extract_str(&plan, line).is_ok(), "{kind}");
                }
            }
        }
    }

    /// Cut short or with one byte changed, a line is either left to serde or read exactly as
    /// serde reads it (the comparison in `extract_str` panics otherwise); cut short, it is never
    /// the scanner's.
    #[test]
    fn damaged_lines_are_left_to_serde_or_read_alike() {
        let plan = paijat_sote();
        let lines = synthetic(6, CodeFlavor::Finnish);
        for (_, line) in lines
            .iter()
            .filter(|(k, _)| *k != ResourceKind::Claim)
            .take(12)
        {
            for cut in 0..line.len() {
                if let Some(short) = line.get(..cut) {
                    assert!(scan(&plan, short).is_none(), "cut at {cut}");
                }
            }
            for at in 0..line.len() {
                for with in [
                    "\"", "\\", "{", "}", "[", "]", ",", ":", " ", "0", "-", "x", "\u{1}",
                ] {
                    let (Some(head), Some(tail)) = (line.get(..at), line.get(at + 1..)) else {
                        continue;
                    };
                    let changed = format!("{head}{with}{tail}");
                    _ = super::super::extract_str(&plan, &changed);
                }
            }
        }
    }

    /// The shapes synth does not write: identifiers, links, meta, periods of onset and effect,
    /// categories, a Patient's escapes in what is skipped, whitespace between tokens.
    #[test]
    fn hand_written_resources_are_scanned_as_serde_reads_them() {
        let plan = plan(include_str!("../../../mappings/helsinki-oral-health.yaml"));
        let kept = [
            r#"{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":"2025-01-01T00:00:00Z","tag":[]},"identifier":[{"system":"urn:oid:1.2.246.21","value":"010101-123N"},{"value":"x"}],"link":[{"other":{"reference":"Patient/p2","display":"a \"b\""},"type":"seealso"}],"name":[{"text":"\u00c4iti \\ \/ \n"}],"birthDate":"1950-02-03"}"#,
            " { \"resourceType\" : \"Condition\" , \"id\" : \"c1\", \"subject\": {\"reference\": \"Patient/p1\"}, \"onsetPeriod\": {\"start\": \"2025-03-01\"}, \"code\": {\"coding\": [{\"system\": \"urn:oid:1.2.246.537.6.1\", \"code\": \"K05.3\"}, {\"code\": \"x\"}], \"text\": \"\"}, \"extension\": [1, -2.5e+3, 0.0, true, false, null, {}, []] } ",
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"effectivePeriod":{"start":"2025-04-01","end":"2025-04-02"},"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"exam"}]}],"code":{"coding":[{"system":"http://snomed.info/sct","code":"109629007"}]}}"#,
        ];
        for line in kept {
            assert!(scan(&plan, line).is_some(), "{line}");
            assert!(super::super::extract_str(&plan, line).is_ok(), "{line}");
        }
        let left = [
            r#"{"resourceType":"Patient","id":"p\u0031"}"#,
            r#"{"resourceType":"Patient","id":null}"#,
            r#"{"resourceType":"Patient","id":"p1","id":"p2"}"#,
            r#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1","reference":"Patient/p2"}}"#,
            r#"{"resourceType":"Claim","id":"c1","total":{"value":1}}"#,
            r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},"valueQuantity":{"value":90}}"#,
            r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},"valueInteger":90}"#,
            r#"{"resourceType":"Patient","id":"p1","x":01}"#,
            r#"{"resourceType":"Patient","id":"p1"} {}"#,
            r#"{"resourceType":"Patient","id":"p1",}"#,
        ];
        for line in left {
            assert!(scan(&plan, line).is_none(), "{line}");
            _ = super::super::extract_str(&plan, line);
        }
        let deep = format!(
            r#"{{"resourceType":"Patient","id":"p1","x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(scan(&plan, &deep).is_none());
    }

    #[test]
    fn the_next_quote_is_found_from_every_offset_across_runs() {
        for len in 0..200 {
            for at in 0..len {
                let mut bytes = vec![b'a'; len];
                bytes[at] = b'"';
                if at + 70 < len {
                    bytes[at + 70] = b'"';
                }
                let text = String::from_utf8(bytes).expect("ascii");
                let mut c = Cursor::new(&text);
                assert_eq!(c.quote(0), Some(at), "{len} {at}");
                assert_eq!(c.quote(at), Some(at), "{len} {at}");
                let next = (at + 70 < len).then_some(at + 70);
                assert_eq!(c.quote(at + 1), next, "{len} {at}");
            }
            let text = "a".repeat(len);
            let mut c = Cursor::new(&text);
            assert_eq!(c.quote(0), None, "{len}");
        }
    }
}
