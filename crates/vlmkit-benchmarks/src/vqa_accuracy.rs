//! The VQA answer processor of EvalAI and the soft accuracy over ten human
//! answers, as LLaVA-1.5 scores TextVQA (`llava/eval/m4c_evaluator.py`,
//! `EvalAIAnswerProcessor` and `TextVQAAccuracyEvaluator`) and writes VizWiz's
//! and VQAv2's submissions.
//!
//! The processor's quirks are kept, because the published numbers carry them:
//! - its period pattern `(?!<=\d)(\.)(?!\d)` is a misspelt look-behind, so it
//!   drops every period not followed by a digit, including one after a digit;
//! - it is called as `PERIOD_STRIP.sub("", text, re.UNICODE)`, where the third
//!   argument is `count`: at most `re.UNICODE` (32) periods are dropped;
//! - commas are gone before the punctuation step, so its "digit, comma, digit"
//!   test never fires;
//! - number words and articles are mapped before contractions.

use std::sync::LazyLock;

use regex::Regex;

use crate::{pytext, Convention};

/// Python's `re.UNICODE`, which the period substitution receives as its count.
const PERIOD_STRIP_COUNT: usize = 32;

const PUNCTUATIONS: [&str; 21] = [
    ";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

fn number(word: &str) -> Option<&'static str> {
    Some(match word {
        "none" | "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        _ => return None,
    })
}

/// EvalAI's contraction table: a word as typed without its apostrophe, and the
/// word it stands for.
fn contraction(word: &str) -> Option<&'static str> {
    Some(match word {
        "aint" => "ain't",
        "arent" => "aren't",
        "cant" => "can't",
        "couldve" => "could've",
        "couldnt" => "couldn't",
        "couldn'tve" | "couldnt've" => "couldn't've",
        "didnt" => "didn't",
        "doesnt" => "doesn't",
        "dont" => "don't",
        "hadnt" => "hadn't",
        "hadnt've" | "hadn'tve" => "hadn't've",
        "hasnt" => "hasn't",
        "havent" => "haven't",
        "hed" => "he'd",
        "hed've" | "he'dve" => "he'd've",
        "hes" => "he's",
        "howd" => "how'd",
        "howll" => "how'll",
        "hows" => "how's",
        "Id've" | "I'dve" => "I'd've",
        "Im" => "I'm",
        "Ive" => "I've",
        "isnt" => "isn't",
        "itd" => "it'd",
        "itd've" | "it'dve" => "it'd've",
        "itll" => "it'll",
        "let's" => "let's",
        "maam" => "ma'am",
        "mightnt" => "mightn't",
        "mightnt've" | "mightn'tve" => "mightn't've",
        "mightve" => "might've",
        "mustnt" => "mustn't",
        "mustve" => "must've",
        "neednt" => "needn't",
        "notve" => "not've",
        "oclock" => "o'clock",
        "oughtnt" => "oughtn't",
        "ow's'at" | "'ows'at" | "'ow'sat" => "'ow's'at",
        "shant" => "shan't",
        "shed've" | "she'dve" => "she'd've",
        "she's" => "she's",
        "shouldve" => "should've",
        "shouldnt" => "shouldn't",
        "shouldnt've" | "shouldn'tve" => "shouldn't've",
        // Sic: the table maps this one the wrong way round.
        "somebody'd" => "somebodyd",
        "somebodyd've" | "somebody'dve" => "somebody'd've",
        "somebodyll" => "somebody'll",
        "somebodys" => "somebody's",
        "someoned" => "someone'd",
        "someoned've" | "someone'dve" => "someone'd've",
        "someonell" => "someone'll",
        "someones" => "someone's",
        "somethingd" => "something'd",
        "somethingd've" | "something'dve" => "something'd've",
        "somethingll" => "something'll",
        "thats" => "that's",
        "thered" => "there'd",
        "thered've" | "there'dve" => "there'd've",
        "therere" => "there're",
        "theres" => "there's",
        "theyd" => "they'd",
        "theyd've" | "they'dve" => "they'd've",
        "theyll" => "they'll",
        "theyre" => "they're",
        "theyve" => "they've",
        "twas" => "'twas",
        "wasnt" => "wasn't",
        "wed've" | "we'dve" => "we'd've",
        "weve" => "we've",
        "werent" => "weren't",
        "whatll" => "what'll",
        "whatre" => "what're",
        "whats" => "what's",
        "whatve" => "what've",
        "whens" => "when's",
        "whered" => "where'd",
        "wheres" => "where's",
        "whereve" => "where've",
        "whod" => "who'd",
        "whod've" | "who'dve" => "who'd've",
        "wholl" => "who'll",
        "whos" => "who's",
        "whove" => "who've",
        "whyll" => "why'll",
        "whyre" => "why're",
        "whys" => "why's",
        "wont" => "won't",
        "wouldve" => "would've",
        "wouldnt" => "wouldn't",
        "wouldnt've" | "wouldn'tve" => "wouldn't've",
        "yall" => "y'all",
        "yall'll" | "y'allll" => "y'all'll",
        "yall'd've" | "y'alld've" | "y'all'dve" => "y'all'd've",
        "youd" => "you'd",
        "youd've" | "you'dve" => "you'd've",
        "youll" => "you'll",
        "youre" => "you're",
        "youve" => "you've",
        _ => return None,
    })
}

/// An answer as EvalAI normalises it before comparing.
pub(crate) fn process_answer(answer: &str) -> String {
    let tokenised = answer
        .to_lowercase()
        .replace([',', '?'], "")
        .replace("'s", " 's");
    let item = pytext::strip(&tokenised).replace(['\n', '\t'], " ");
    let item = process_punctuation(pytext::strip(&item));
    process_digit_article(&item)
}

fn process_punctuation(text: &str) -> String {
    static DIGIT_COMMA_DIGIT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\d,+\d").expect("valid"));
    let comma_between_digits = DIGIT_COMMA_DIGIT.is_match(text);
    let mut out = text.to_owned();
    for p in PUNCTUATIONS {
        // The test reads the text as it came in, not as replaced so far.
        let spaced = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(
            p,
            if spaced || comma_between_digits {
                ""
            } else {
                " "
            },
        );
    }
    strip_periods(&out)
}

/// Drops the first 32 periods that are not followed by a decimal digit.
fn strip_periods(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut dropped = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let followed_by_digit = chars.peek().is_some_and(|&next| pytext::is_decimal(next));
        if c == '.' && !followed_by_digit && dropped < PERIOD_STRIP_COUNT {
            dropped += 1;
            continue;
        }
        out.push(c);
    }
    out
}

fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = pytext::split(&lower)
        .map(|word| number(word).unwrap_or(word))
        .filter(|word| !ARTICLES.contains(word))
        .map(|word| contraction(word).unwrap_or(word))
        .collect();
    words.join(" ")
}

/// The soft accuracy of `prediction` against the human answers: for each of the
/// n answers left out in turn, min(1, matches among the others / 3), averaged.
/// LLaVA's m4c evaluator sums the n terms in order and divides; lmms-eval
/// (after its reply clean-up) takes `statistics.mean`, exact and rounded once.
pub(crate) fn soft_accuracy(
    prediction: &str,
    human_answers: &[String],
    convention: Convention,
) -> f64 {
    let prediction = match convention {
        Convention::Llava => prediction.to_owned(),
        Convention::LmmsEval => crate::pytext::lmms_eval_reply(prediction),
    };
    let predicted = process_answer(&prediction);
    let answers: Vec<String> = human_answers.iter().map(|a| process_answer(a)).collect();
    if !answers.contains(&predicted) {
        return 0.0;
    }
    let matching = answers.iter().filter(|a| **a == predicted).count();
    let terms = answers.iter().map(|left_out| {
        let others = matching - usize::from(*left_out == predicted);
        f64::min(1.0, others as f64 / 3.0)
    });
    match convention {
        Convention::Llava => terms.sum::<f64>() / answers.len() as f64,
        Convention::LmmsEval => exact_mean(terms, answers.len()),
    }
}

/// Python's `statistics.mean` of `n` floats in [0, 1]: their exact sum divided
/// by `n`, rounded once.
fn exact_mean(terms: impl Iterator<Item = f64>, n: usize) -> f64 {
    // Each term is m × 2^e with a 53-bit m and e ≥ -1074; in [0, 1] a common
    // scale of 2^-1074 would do, but the terms here are 0, 1/3, 2/3 and 1, so
    // 2^-60 holds them exactly and the sum of a few thousand fits in a u128.
    const SCALE: i32 = 60;
    let mut sum: u128 = 0;
    for term in terms {
        let scaled = term * 2f64.powi(SCALE);
        debug_assert_eq!(
            scaled.fract(),
            0.0,
            "{term} is not a multiple of 2^-{SCALE}"
        );
        sum += scaled as u128;
    }
    // (sum << 64) / n keeps 64 more bits than the quotient needs; a remainder
    // sets the lowest bit so the one rounding to f64 sees it.
    let shifted = sum << 64;
    let quotient = shifted / n as u128;
    let sticky = u128::from(!shifted.is_multiple_of(n as u128));
    (quotient | sticky) as f64 * 2f64.powi(-(SCALE + 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_cases() {
        assert_eq!(process_answer("Two."), "2");
        assert_eq!(process_answer("The Dog"), "dog");
        assert_eq!(process_answer("  yes\n"), "yes");
        assert_eq!(process_answer("dont"), "don't");
        assert_eq!(process_answer("1,000"), "1000");
        assert_eq!(process_answer("3.5"), "3.5");
        assert_eq!(process_answer("end. 3."), "end 3");
        assert_eq!(process_answer("up-to-date"), "up to date");
        assert_eq!(process_answer("a - b"), "b");
        assert_eq!(process_answer("John's"), "john 's");
    }

    #[test]
    fn only_32_periods_are_dropped() {
        let text = ".".repeat(40);
        assert_eq!(strip_periods(&text), ".".repeat(8));
    }

    #[test]
    fn soft_accuracy_counts_others() {
        let answers = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let ten = answers(&["a"; 10]);
        let soft = |p: &str, a: &[String]| soft_accuracy(p, a, Convention::Llava);
        assert_eq!(soft("a", &ten), 1.0); // an article: "" matches ""
        let mixed = answers(&[
            "cat", "cat", "dog", "dog", "dog", "dog", "dog", "dog", "dog", "dog",
        ]);
        // Each left-out answer leaves 1 or 2 cats: (2 × 1/3 + 8 × 2/3) / 10.
        assert!((soft("cat", &mixed) - 0.6).abs() < 1e-12);
        assert_eq!(soft("dog", &mixed), 1.0);
        assert_eq!(soft("bird", &mixed), 0.0);
    }

    /// Python: `statistics.mean` of the ten terms for "x" at human answers 3, 8
    /// and 9 is 0.9; summing in order and dividing gives 0.8999999999999998.
    #[test]
    fn lmms_eval_takes_the_exact_mean() {
        let answers: Vec<String> = (0..10)
            .map(|i| if [3, 8, 9].contains(&i) { "x" } else { "y" }.to_string())
            .collect();
        assert_eq!(
            soft_accuracy("x", &answers, Convention::Llava),
            0.8999999999999998
        );
        assert_eq!(soft_accuracy("x", &answers, Convention::LmmsEval), 0.9);
        assert_eq!(
            soft_accuracy("<think>y</think> x", &answers, Convention::LmmsEval),
            0.9
        );
    }
}
