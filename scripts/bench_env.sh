# Sourced by the benchmark scripts, from the repository root: sets `model` (MODEL, else the
# demo model, fetched by setup.sh where missing) and `bin` (BIN, else a release build of
# this checkout, made here).
model=${MODEL:-$(bash scripts/setup.sh | tail -n 1)}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked
fi
bin=${BIN:-$PWD/target/release/gelaco}
