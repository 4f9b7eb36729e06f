//! Evaluation: generate answers for an eval split, score them per question family
//! against chance and majority baselines, POPE metrics for yes/no existence
//! questions, and reports (table, JSON, PNG).

pub mod run;
pub mod score;

pub use run::{
    evaluate, evaluate_and_save, generate_answers, read_predictions, save_outputs, EvalOptions,
    CHART_FILE, PREDICTIONS_FILE, REPORT_FILE,
};
pub use score::{
    normalize_answer, score, AnswerMatch, EvalReport, FamilyScore, PopeScore, Prediction,
};
