fn main() {
    runvz_fuzz::main(runvz_fuzz::targets::config);
}
