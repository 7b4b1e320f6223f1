//! The command line's words for the core: named settings as clap values, and core errors
//! with the flags that set what they name.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use gelaco::util::Choice;

/// A clap value parser for a core [`Choice`]: its names are the accepted values, its help
/// lines their descriptions in `--help`.
#[derive(Clone)]
pub struct ChoiceParser<T>(PhantomData<T>);

pub fn choice<T: Choice>() -> ChoiceParser<T> {
    ChoiceParser(PhantomData)
}

impl<T: Choice> TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let names = T::VALUES.iter().map(|v| v.name());
        let name = PossibleValuesParser::new(names).parse_ref(cmd, arg, value)?;
        T::from_name(&name).ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::VALUES.iter().map(|v| PossibleValue::new(v.name()).help(v.help()))))
    }
}

/// A `--device` value: auto, gpu, cpu or gpu:N.
pub fn device(text: &str) -> Result<gelaco::backend::DeviceChoice, String> {
    text.parse()
}

/// A core error in the command line's words: a setting by its flag, and the flag that
/// answers the error where there is one.
pub fn words(e: &gelaco::Error) -> String {
    use gelaco::Error;
    match e {
        Error::Setting { setting, message } => format!("--{} {message}", setting.replace('_', "-")),
        Error::OutputExists { .. } => format!("{e} (--force)"),
        Error::OtherModel { .. } => format!("{e}; pass --any-model to apply it to a model of the same shape anyway"),
        Error::RunExists { path } => format!(
            "{} is not empty: resume it with `gelaco resume {}` or choose another --out",
            path.display(),
            path.display()
        ),
        _ => e.to_string(),
    }
}

/// The whole error chain of `e` as one line, each core error in the command line's words.
/// A cause that an error before it already prints (a file error names its I/O error) is
/// not said twice.
pub fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let plain = cause.to_string();
        if !text.is_empty() && text.contains(&plain) {
            continue;
        }
        let own = cause.downcast_ref::<gelaco::Error>().map(words).unwrap_or(plain);
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&own);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use gelaco::collapse::MergeOp;

    #[derive(Parser)]
    struct Probe {
        #[arg(long, value_parser = choice::<MergeOp>())]
        op: MergeOp,
    }

    #[test]
    fn choice_values_parse_and_refuse_unknown_names() {
        assert_eq!(Probe::try_parse_from(["p", "--op", "keep-first"]).unwrap().op, MergeOp::KeepFirst);
        let e = Probe::try_parse_from(["p", "--op", "average"]).err().unwrap().to_string();
        assert!(e.contains("keep-first") && e.contains("average"), "{e}");
    }

    #[test]
    fn settings_are_named_by_their_flags() {
        let e = gelaco::Error::setting("cache_mb", "1 cannot hold one sample");
        assert_eq!(words(&e), "--cache-mb 1 cannot hold one sample");
        let chained = anyhow::Error::new(e).context("fitness");
        assert_eq!(describe(&chained), "fitness: --cache-mb 1 cannot hold one sample");
    }

    #[test]
    fn a_file_error_says_its_cause_once() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(gelaco::Error::io("calib/wiki.txt", missing)).context("calibration");
        assert_eq!(describe(&e), "calibration: calib/wiki.txt: No such file or directory (os error 2)");
    }
}
