//! What a value from the input looks like, without the value. Rejections, errors and logs may
//! name elements, resource types and valid FHIR ids, files and lines, but never copy what a
//! resource holds: a bad `birthDate` or a conditional reference may carry a birth date or an
//! identity code. This module turns such values into descriptions of their shape ("10
//! characters, digits and '-'", "a conditional reference with an identifier") and redacts the
//! values serde quotes in its messages. It decides nothing about whether a value is accepted.

use std::fmt::Write as _;

/// How many characters `text` has and of what kinds, in order of first appearance: letters,
/// digits, spaces, each ASCII punctuation mark by name (`'-'`), and other characters.
pub fn describe(text: &str) -> String {
    /// Past this many distinct marks, the rest are "other punctuation".
    const MARKS: usize = 6;
    let count = text.chars().count();
    if count == 0 {
        return "empty".to_owned();
    }
    let mut kinds: Vec<String> = Vec::new();
    let mut marks = 0;
    for c in text.chars() {
        let kind = if c.is_alphabetic() {
            "letters".to_owned()
        } else if c.is_ascii_digit() {
            "digits".to_owned()
        } else if c.is_whitespace() {
            "spaces".to_owned()
        } else if c.is_ascii_punctuation() && marks < MARKS {
            format!("'{c}'")
        } else if c.is_ascii_punctuation() {
            "other punctuation".to_owned()
        } else if c.is_control() {
            "control characters".to_owned()
        } else {
            "other characters".to_owned()
        };
        if !kinds.contains(&kind) {
            marks += usize::from(kind.starts_with('\''));
            kinds.push(kind);
        }
    }
    let mut out = format!("{count} character{}", if count == 1 { "" } else { "s" });
    for (i, kind) in kinds.iter().enumerate() {
        let joint = match i {
            0 => ", ",
            _ if i + 1 == kinds.len() => " and ",
            _ => ", ",
        };
        let _ = write!(out, "{joint}{kind}");
    }
    out
}

/// What a reference that names no Patient by `Patient/id` is, as the end of "subject is ...".
pub(crate) fn describe_reference(reference: &str) -> String {
    if reference.is_empty() {
        return "empty".to_owned();
    }
    if reference.starts_with('#') {
        return "a reference to a contained resource".to_owned();
    }
    if let Some((_, query)) = reference.split_once('?') {
        let with = if query.split('&').any(|p| p.starts_with("identifier=")) {
            "with an identifier"
        } else {
            "(a search)"
        };
        return format!("a conditional reference {with}");
    }
    if reference.starts_with("urn:") {
        return "a urn: reference (a Bundle entry's fullUrl that was not resolved)".to_owned();
    }
    let path = reference.split("/_history/").next().unwrap_or(reference);
    if let Some((head, id)) = path.rsplit_once('/') {
        let kind = head.rsplit('/').next().unwrap_or(head);
        if kind == "Patient" {
            return format!(
                "a Patient reference whose id is not a FHIR id ({})",
                describe(id)
            );
        }
        if crate::fhir::types::is_r4_resource_type(kind) {
            return format!("a reference to a {kind}");
        }
    }
    format!("no reference of the form Type/id ({})", describe(reference))
}

/// `message` (a serde error's) with every value it quotes, `"..."` or `` `...` ``, replaced
/// by its [`describe`]d shape: serde shows the offending string or number, and that string
/// may be an identity code.
pub(crate) fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(['"', '`']) {
        out.push_str(&rest[..at]);
        let quote = rest.as_bytes()[at];
        let body = &rest[at + 1..];
        // serde quotes strings with `{:?}`, so a quote inside one is escaped.
        let mut escaped = false;
        let end = body.char_indices().find_map(|(i, c)| {
            let closes = c == char::from(quote) && !escaped;
            escaped = quote == b'"' && c == '\\' && !escaped;
            closes.then_some(i)
        });
        let (value, after) = match end {
            Some(end) => (&body[..end], &body[end + 1..]),
            None => (body, ""),
        };
        let _ = write!(out, "({})", describe(value));
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "010203A123B";

    #[test]
    fn a_description_gives_length_and_kinds_but_not_the_value() {
        assert_eq!(describe("1950-13-45"), "10 characters, digits and '-'");
        assert_eq!(describe(""), "empty");
        assert_eq!(describe("x"), "1 character, letters");
        assert_eq!(
            describe("Matti Meikäläinen 010203A123B"),
            "29 characters, letters, spaces and digits"
        );
        assert_eq!(
            describe("a\u{1}€"),
            "3 characters, letters, control characters and other characters"
        );
        assert_eq!(
            describe("!#$%&()*"),
            "8 characters, '!', '#', '$', '%', '&', '(' and other punctuation"
        );
    }

    #[test]
    fn references_are_described_by_form() {
        let conditional = format!("Patient?identifier=urn:oid:1.2.246.21|{CODE}");
        assert_eq!(
            describe_reference(&conditional),
            "a conditional reference with an identifier"
        );
        assert_eq!(
            describe_reference("Patient?name=Virtanen"),
            "a conditional reference (a search)"
        );
        assert_eq!(describe_reference("Group/1"), "a reference to a Group");
        assert_eq!(
            describe_reference("Patient/Matti Virtanen"),
            "a Patient reference whose id is not a FHIR id (14 characters, letters and spaces)"
        );
        assert!(describe_reference("urn:uuid:1234").starts_with("a urn: reference"));
        assert_eq!(
            describe_reference(CODE),
            "no reference of the form Type/id (11 characters, digits and letters)"
        );
        for r in [conditional.as_str(), "Patient/Matti Virtanen", CODE] {
            let d = describe_reference(r);
            assert!(!d.contains(CODE) && !d.contains("Virtanen"), "{d}");
        }
    }

    #[test]
    fn serde_messages_lose_the_values_they_quote() {
        let message = format!(
            "invalid type: string \"{CODE} \\\"x\\\"\", expected a boolean at line 1 column 40"
        );
        assert_eq!(
            redact_quoted(&message),
            "invalid type: string (17 characters, digits, letters, spaces, '\\' and '\"'), expected a boolean at line 1 column 40"
        );
        assert_eq!(
            redact_quoted("invalid type: integer `10203`, expected a string"),
            "invalid type: integer (5 characters, digits), expected a string"
        );
        assert_eq!(
            redact_quoted(&format!("cut \"{CODE}")),
            "cut (11 characters, digits and letters)"
        );
        assert_eq!(redact_quoted("EOF while parsing"), "EOF while parsing");
    }
}
