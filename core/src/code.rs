//! Codes people can say out loud: `7-guitar-rocket`, a short number and words from the
//! EFF short word list.
//!
//! The number names the room at the relay ([`PakeCode::room_id`]) and is not secret; the
//! words are the secret, and they never leave this machine: the two sides prove that they
//! hold the same code with a PAKE ([`crate::pake`]), so the relay learns nothing it could
//! guess offline, and each attempt at the relay is worth one guess.
//!
//! The word list is the EFF's *short word list 1* (Joseph Bonneau, EFF, 2016, published
//! under CC BY 3.0 US at eff.org/dice): short words (3 to 5 letters) picked to be easy to
//! type, spell and remember, without offensive or easily confused entries. It gives
//! log2(1295) ≈ 10.3 bits per word, so two words (the default) give ≈ 20.7 bits, the
//! least this tool accepts. The PGP word list was the other candidate: its 8 bits per word
//! would take three words for the same strength. The list is embedded as published, less
//! its entry 6652, which is not a plain run of letters (the hyphen separates words here).

use std::fmt;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The word list, one word a line.
const WORD_LIST: &str = include_str!("code/eff_short_wordlist_1.txt");

/// Words in [`words`].
pub const WORD_COUNT: usize = 1295;
/// Fewest words in a code (≈ 20.7 bits).
pub const MIN_WORDS: usize = 2;
/// Words in a generated code unless asked otherwise.
pub const DEFAULT_WORDS: usize = 2;
/// Most words in a code.
pub const MAX_WORDS: usize = 8;
/// Numbers of generated codes run from 1 to this.
pub const MAX_GENERATED_NUMBER: u32 = 999;
/// Most digits of a code's number.
const MAX_NUMBER_DIGITS: usize = 6;
/// Least estimated strength of a chosen code, in bits.
pub const MIN_BITS: f64 = 20.0;

/// The EFF short word list 1 as embedded, in its published order.
pub fn words() -> &'static [&'static str] {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| WORD_LIST.lines().filter(|l| !l.is_empty()).collect())
}

fn is_listed(word: &str) -> bool {
    words().binary_search(&word).is_ok()
}

/// Bits of one word drawn at random from the list.
pub fn bits_per_word() -> f64 {
    (WORD_COUNT as f64).log2()
}

/// A code of the PAKE form, normalised: lowercase words, the number without leading
/// zeros, `-` between the parts.
#[derive(Clone, PartialEq, Eq)]
pub struct PakeCode {
    number: u32,
    words: Vec<String>,
}

impl fmt::Debug for PakeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words are the secret: debug output (logs, panics) shows only the room.
        write!(f, "PakeCode({}-…)", self.number)
    }
}

impl fmt::Display for PakeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number)?;
        for w in &self.words {
            write!(f, "-{w}")?;
        }
        Ok(())
    }
}

/// Why a code of the PAKE form cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRefused(pub String);

impl fmt::Display for CodeRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Words people pick first for a secret: a chosen code with one of them is refused
/// whatever its length. None is in the word list, so a generated code never has one.
const OBVIOUS: &[&str] = &[
    "password", "passwd", "secret", "code", "test", "testing", "hello", "admin", "qwerty",
    "letmein", "welcome", "abc", "abcd", "xyz", "foo", "bar", "baz", "p2p", "file", "files",
    "transfer", "temp", "tmp", "demo", "example", "root",
];

impl PakeCode {
    /// Whether `code` has the PAKE form: a number (up to 6 digits), then one or more
    /// words of letters, separated by `-` (or spaces, as people type what they hear).
    /// Anything else is a v1 code, hashed as p2p-copy 0.1.x hashes it.
    pub fn recognise(code: &str) -> bool {
        split(code).is_some()
    }

    /// Read a code of the PAKE form as given to the receiver: any words, at least
    /// [`MIN_WORDS`].
    ///
    /// # Errors
    /// The code does not have the form, or has too few or too many words.
    pub fn parse(code: &str) -> Result<PakeCode, CodeRefused> {
        let (number, words) = split(code).ok_or_else(|| {
            CodeRefused("a code of this kind is a number and words, like 7-guitar-rocket".into())
        })?;
        if words.len() < MIN_WORDS {
            return Err(CodeRefused(format!(
                "a code needs at least {MIN_WORDS} words after the number, like 7-guitar-rocket"
            )));
        }
        if words.len() > MAX_WORDS {
            return Err(CodeRefused(format!(
                "a code has at most {MAX_WORDS} words after the number"
            )));
        }
        Ok(PakeCode { number, words })
    }

    /// Read a code that the sender chose (`--code`), and refuse it when it is too easy to
    /// guess: fewer than [`MIN_WORDS`] words, a word twice, an obvious word, or less than
    /// [`MIN_BITS`] by [`PakeCode::estimated_bits`].
    ///
    /// # Errors
    /// Why the code is refused, in words a user can act on.
    pub fn parse_chosen(code: &str) -> Result<PakeCode, CodeRefused> {
        let parsed = PakeCode::parse(code)?;
        for (i, w) in parsed.words.iter().enumerate() {
            if parsed.words[..i].contains(w) {
                return Err(CodeRefused(format!(
                    "the word \"{w}\" appears twice: repeated words add nothing to guess; \
                     use different words, or let send generate the code"
                )));
            }
            if OBVIOUS.contains(&w.as_str()) {
                return Err(CodeRefused(format!(
                    "\"{w}\" is among the first words anyone guesses; use other words, or \
                     let send generate the code"
                )));
            }
        }
        let bits = parsed.estimated_bits();
        if bits < MIN_BITS {
            return Err(CodeRefused(format!(
                "this code is too easy to guess: its words give about {bits:.0} bits, and at \
                 least {MIN_BITS:.0} are needed; add a word (words of the EFF short list count \
                 {:.1} bits each, other words at most 14), or let send generate the code",
                bits_per_word()
            )));
        }
        Ok(parsed)
    }

    /// A fresh code: a number from 1 to [`MAX_GENERATED_NUMBER`] and `words` words
    /// (clamped to [`MIN_WORDS`]..=[`MAX_WORDS`]) drawn uniformly from the list. The
    /// randomness comes from `random`, which fills a buffer with unpredictable bytes.
    pub fn generate(words: usize, mut random: impl FnMut(&mut [u8])) -> PakeCode {
        let n = words.clamp(MIN_WORDS, MAX_WORDS);
        let number = 1 + uniform(MAX_GENERATED_NUMBER, &mut random);
        let list = self::words();
        let words = (0..n)
            .map(|_| list[uniform(list.len() as u32, &mut random) as usize].to_owned())
            .collect();
        PakeCode { number, words }
    }

    /// The same code with another number (the words stay): for a room already in use.
    pub fn with_number(&self, number: u32) -> PakeCode {
        PakeCode {
            number,
            words: self.words.clone(),
        }
    }

    /// The number, which names the room.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The words, the secret part.
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// What the words are worth against a guesser who knows how codes are made: a word
    /// of the list counts log2(1295) ≈ 10.3 bits, any other word the lesser of 14 bits
    /// (a vocabulary of ≈ 16,000 words) and 4.7 bits a letter.
    pub fn estimated_bits(&self) -> f64 {
        self.words
            .iter()
            .map(|w| {
                if is_listed(w) {
                    bits_per_word()
                } else {
                    (26f64.log2() * w.len() as f64).min(14.0)
                }
            })
            .sum()
    }

    /// The room this code meets in at the relay: 32 hex digits derived from the number
    /// alone, sent in `hello` in place of v1's code hash and in the URL path
    /// `/r/<room-id>`. A v1 code hash has 64 hex digits, so the two never meet.
    pub fn room_id(&self) -> String {
        room_id(self.number)
    }

    /// The password the PAKE runs on: the normalised code.
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// The room id of a code number (see [`PakeCode::room_id`]).
pub fn room_id(number: u32) -> String {
    let digest = Sha256::new()
        .chain_update(b"p2p-copy room v1 ")
        .chain_update(number.to_string().as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a `hello`'s hash names a PAKE room (32 lowercase hex digits) rather than a v1
/// code hash (64).
pub fn is_room_id(hash: &str) -> bool {
    hash.len() == 32
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The number and the lowercase words, when `code` has the PAKE form.
fn split(code: &str) -> Option<(u32, Vec<String>)> {
    let mut parts = code
        .trim()
        .split(|c: char| c == '-' || c.is_whitespace())
        .filter(|p| !p.is_empty());
    let number = parts.next()?;
    if number.len() > MAX_NUMBER_DIGITS || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u32 = number.parse().ok()?;
    let words: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    if words.is_empty()
        || !words
            .iter()
            .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return None;
    }
    // A run of separators is one separator, but a code must not start with one.
    if code.trim().starts_with('-') {
        return None;
    }
    Some((number, words))
}

/// A uniform draw from `0..bound` by rejection, so no value is more likely than another.
fn uniform(bound: u32, random: &mut impl FnMut(&mut [u8])) -> u32 {
    let zone = u32::MAX - (u32::MAX % bound);
    loop {
        let mut b = [0u8; 4];
        random(&mut b);
        let v = u32::from_be_bytes(b);
        if v < zone {
            return v % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counter_random() -> impl FnMut(&mut [u8]) {
        let mut state = [7u8; 32];
        move |buf: &mut [u8]| {
            for chunk in buf.chunks_mut(32) {
                state = Sha256::digest(state).into();
                chunk.copy_from_slice(&state[..chunk.len()]);
            }
        }
    }

    #[test]
    fn the_word_list_is_the_eff_short_list_as_embedded() {
        let list = words();
        assert_eq!(list.len(), WORD_COUNT);
        assert_eq!(list.first(), Some(&"acid"));
        assert_eq!(list.last(), Some(&"zoom"));
        assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert!(OBVIOUS.iter().all(|w| !is_listed(w)));
        assert!(list
            .iter()
            .all(|w| (3..=5).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase())));
        // The published list's digest, less entry 6652, as embedded.
        let digest: String = Sha256::digest(WORD_LIST.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            "baa6dcee905fb968891ff3e7b55143ed048fac42c144ddf2a2de601f51568cf1"
        );
    }

    #[test]
    fn two_words_give_at_least_twenty_bits() {
        assert!(bits_per_word() > 10.33 && bits_per_word() < 10.34);
        let code = PakeCode::generate(DEFAULT_WORDS, counter_random());
        assert_eq!(code.word_count(), 2);
        assert!(
            code.estimated_bits() >= MIN_BITS,
            "{}",
            code.estimated_bits()
        );
        let long = PakeCode::generate(5, counter_random());
        assert_eq!(long.word_count(), 5);
        assert!((long.estimated_bits() - 5.0 * bits_per_word()).abs() < 1e-9);
        assert_eq!(
            PakeCode::generate(1, counter_random()).word_count(),
            MIN_WORDS
        );
        assert_eq!(
            PakeCode::generate(99, counter_random()).word_count(),
            MAX_WORDS
        );
    }

    #[test]
    fn generated_codes_are_recognised_and_read_back() {
        let mut random = counter_random();
        for _ in 0..200 {
            let code = PakeCode::generate(3, &mut random);
            let text = code.to_string();
            assert!(PakeCode::recognise(&text), "{text}");
            assert_eq!(PakeCode::parse(&text).unwrap(), code);
            assert_eq!(PakeCode::parse_chosen(&text).unwrap(), code);
            assert!((1..=MAX_GENERATED_NUMBER).contains(&code.number()));
        }
    }

    #[test]
    fn draws_are_spread_over_the_whole_list_and_number_range() {
        let mut random = counter_random();
        let mut seen = vec![0u32; WORD_COUNT];
        let mut numbers = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let code = PakeCode::generate(2, &mut random);
            numbers.insert(code.number());
            for w in &code.words {
                seen[words().binary_search(&w.as_str()).unwrap()] += 1;
            }
        }
        // 40,000 draws over 1295 words: about 31 each; every word comes up.
        assert!(seen.iter().all(|&n| n > 5), "min {:?}", seen.iter().min());
        assert!(seen.iter().all(|&n| n < 70), "max {:?}", seen.iter().max());
        assert_eq!(numbers.len(), MAX_GENERATED_NUMBER as usize);
    }

    #[test]
    fn the_form_is_a_number_then_words() {
        for yes in [
            "7-guitar-rocket",
            "7 guitar rocket",
            " 12-Acid-Zoom ",
            "0042-a-b",
            "7-x",
        ] {
            assert!(PakeCode::recognise(yes), "{yes}");
        }
        for no in [
            "guitar-rocket",
            "7",
            "7-",
            "-7-a-b",
            "n=4=nsecret",
            "7-guitar-r0cket",
            "mysecret",
            "1234567-a-b",
            "7-gui_tar-rocket",
            "",
        ] {
            assert!(!PakeCode::recognise(no), "{no}");
        }
        assert_eq!(
            PakeCode::parse(" 0042 Acid  ZOOM").unwrap().to_string(),
            "42-acid-zoom"
        );
    }

    #[test]
    fn guessable_chosen_codes_are_refused_with_a_reason() {
        for (code, says) in [
            ("7-rocket", "at least 2 words"),
            ("7-acid-acid", "appears twice"),
            ("7-secret-sauce", "first words anyone guesses"),
            ("7-ab-cd", "too easy to guess"),
            ("7-x-y-z-w", "too easy to guess"),
        ] {
            let e = PakeCode::parse_chosen(code).unwrap_err();
            assert!(e.0.contains(says), "{code}: {e}");
        }
        assert!(PakeCode::parse_chosen("7-guitar-rocket").is_ok());
        assert!(PakeCode::parse_chosen("3-acid-zoom").is_ok());
        assert!(
            PakeCode::parse("7-acid-acid").is_ok(),
            "the receiver takes any code"
        );
    }

    #[test]
    fn the_room_depends_on_the_number_alone() {
        let a = PakeCode::parse("7-acid-zoom").unwrap();
        let b = PakeCode::parse("007-tiger-relay-oak").unwrap();
        assert_eq!(a.room_id(), b.room_id());
        assert_ne!(
            a.room_id(),
            PakeCode::parse("8-acid-zoom").unwrap().room_id()
        );
        assert!(is_room_id(&a.room_id()));
        assert!(!is_room_id(&"ab".repeat(32)));
        assert!(!a.room_id().contains("acid"));
        assert!(
            !format!("{a:?}").contains("acid"),
            "debug output hides the words"
        );
    }

    proptest! {
        #[test]
        fn recognised_codes_parse_or_say_why(s in "[0-9]{1,3}([- ][a-zA-Z]{1,6}){0,9}") {
            prop_assert!(PakeCode::recognise(&s) == s.chars().any(|c| c.is_ascii_alphabetic()));
            if let Ok(c) = PakeCode::parse(&s) {
                prop_assert_eq!(PakeCode::parse(&c.to_string()).unwrap(), c);
            }
        }
    }
}
