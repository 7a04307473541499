use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The CouponCampaign operator.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinition (what crds/ holds).
    Crdgen,
}

fn main() -> ExitCode {
    let Args { command } = Args::parse();
    match command {
        Command::Crdgen => {
            print!("{}", coupon_operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
