//! The grid of a sweep: the networks by the names papers use, and the seeds.

#![allow(dead_code)]

use std::fmt;
use std::str::FromStr;

use fdfa::data::DatasetName;

/// A network of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// FC-n: `n` hidden layers (`--n-layers n`).
    Fc(usize),
    /// The shallow CNN (`--conv`).
    Cnn,
    /// CIFAR-100's AlexNet with BatchNorm.
    AlexNet,
}

impl Network {
    /// The folder name, as the command line spells it: `fc2`, `cnn`, `alexnet`.
    pub fn key(self) -> String {
        match self {
            Self::Fc(n) => format!("fc{n}"),
            Self::Cnn => "cnn".into(),
            Self::AlexNet => "alexnet".into(),
        }
    }

    /// The dataset examples' flags that build this network.
    pub fn flags(self) -> Vec<String> {
        match self {
            Self::Fc(n) => vec!["--n-layers".into(), n.to_string()],
            Self::Cnn => vec!["--conv".into()],
            Self::AlexNet => Vec::new(),
        }
    }

    /// Whether the dataset example of `dataset` builds this network.
    pub fn fits(self, dataset: DatasetName) -> bool {
        (dataset == DatasetName::Cifar100) == (self == Self::AlexNet)
    }
}

impl fmt::Display for Network {
    /// The name papers use: `FC-2`, `CNN`, `AlexNet`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fc(n) => write!(f, "FC-{n}"),
            Self::Cnn => f.write_str("CNN"),
            Self::AlexNet => f.write_str("AlexNet"),
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let key: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .flat_map(char::to_lowercase)
            .collect();
        match key.as_str() {
            "cnn" | "conv" => Ok(Self::Cnn),
            "alexnet" => Ok(Self::AlexNet),
            _ => match key.strip_prefix("fc").map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => Ok(Self::Fc(n)),
                _ => Err(format!(
                    "unknown network `{s}`; expected fc1, fc2, fc3, ..., cnn or alexnet"
                )),
            },
        }
    }
}

/// Parses `0-4`, `1-3,7`: the seeds in the order given, without repeats.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>, String> {
    let mut seeds = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|e| format!("seed `{t}` in `{s}`: {e}"))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if a > b {
            return Err(format!("seed range `{part}` runs backwards"));
        }
        for seed in a..=b {
            if !seeds.contains(&seed) {
                seeds.push(seed);
            }
        }
    }
    if seeds.is_empty() {
        return Err(format!("no seed in `{s}`"));
    }
    Ok(seeds)
}

/// The name a sweep gives `dataset` in folders and tables: `mnist`, `fashion-mnist`,
/// `cifar10`, `cifar100` (what `--datasets` takes).
pub fn dataset_key(dataset: DatasetName) -> &'static str {
    match dataset {
        DatasetName::Mnist => "mnist",
        DatasetName::FashionMnist => "fashion-mnist",
        DatasetName::Cifar10 => "cifar10",
        DatasetName::Cifar100 => "cifar100",
    }
}
