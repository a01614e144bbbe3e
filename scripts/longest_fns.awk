# Usage: find src -name "*.rs" | xargs awk -f scripts/longest_fns.awk | sort -rn | head -5
# Lengths of Rust functions: from a line declaring `fn NAME` to the line where the
# braces opened on/after it balance again (string/char/comment contents ignored roughly).
function strip(l) {
    gsub(/\/\/.*$/, "", l)                 # line comments
    gsub(/"([^"\\]|\\.)*"/, "\"\"", l)     # string literals
    gsub(/'([^'\\]|\\.)'/, "''", l)        # char literals
    return l
}
FNR == 1 { depth = 0; nstack = 0 }
{
    line = strip($0)
    if (match(line, /(^|[^a-zA-Z0-9_])fn [a-zA-Z0-9_]+/)) {
        name = substr(line, RSTART, RLENGTH); sub(/.*fn /, "", name)
        # Skip declarations without a body on this line or soon (trait items end with `;`).
        nstack++; sname[nstack] = name; sstart[nstack] = FNR; sdepth[nstack] = depth; sopen[nstack] = 0
    }
    for (i = 1; i <= length(line); i++) {
        c = substr(line, i, 1)
        if (c == "{") {
            depth++
            if (nstack > 0 && !sopen[nstack] && depth == sdepth[nstack] + 1) sopen[nstack] = 1
        } else if (c == "}") {
            depth--
            if (nstack > 0 && sopen[nstack] && depth == sdepth[nstack]) {
                printf "%d %s:%d %s\n", FNR - sstart[nstack] + 1, FILENAME, sstart[nstack], sname[nstack]
                nstack--
            }
        } else if (c == ";" && nstack > 0 && !sopen[nstack] && depth == sdepth[nstack]) {
            nstack--   # a declaration without a body
        }
    }
}
