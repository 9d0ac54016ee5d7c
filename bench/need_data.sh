# need_data.sh — sourced by the bench/ scripts that read the project's
# datasets in ../shared/data (beside the checkout in CI and on the
# project's machines, not part of a clone). `need_data KIND FILE VAR`
# returns when FILE exists; otherwise it says what the file is, where an
# equivalent comes from and that VAR points the script at it, and exits 2.
need_data() {
    local kind=$1 file=$2 var=$3 what how
    [ -f "$file" ] && return 0
    case "$kind" in
    e2e)
        what='the E2E NLG Challenge development set: 4,672 JSONL rows {"prompt": meaning representation, "completion": reference sentence}, grouped by restaurant (CC BY-SA 4.0)'
        how='the "validation" split of the Hugging Face dataset tuetschek/e2e_nlg (or the challenge'"'"'s devset.csv), one {"prompt": meaning_representation, "completion": human_reference} per line, in the file'"'"'s order' ;;
    sst2)
        what='the SST-2 (GLUE) training split: 67,349 JSONL rows {"text": sentence, "label": 0|1} (0 negative, 1 positive)'
        how='the "train" split of GLUE SST-2 (Hugging Face stanfordnlp/sst2), one {"text": sentence, "label": label} per line' ;;
    *)
        what="a dataset of ../shared/data"
        how="../shared/data/README.md" ;;
    esac
    {
        echo "$(basename "$0"): $file not found."
        echo "  It is $what,"
        echo "  from ../shared/data, the project's datasets for its tests and benchmarks: it sits beside the"
        echo "  checkout in CI and on the project's machines; a clone does not have it."
        echo "  An equivalent: $how."
        echo "  Then: $var=... bash bench/$(basename "$0")   (bench/README.md, \"Data\")"
    } >&2
    exit 2
}
