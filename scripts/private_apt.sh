# Sourced by scripts that fetch Debian packages without touching the machine's apt set-up:
# private_apt DIR "SOURCES LINE" sets APT (apt-get options: that one sources line, lists and cache
# under DIR) and updates those lists.  Nothing is installed.
private_apt() {
    local dir="$1" line="$2"
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    echo "$line" > "$dir/sources.list"
    APT=(-q -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$dir/lists"
         -o "Dir::Cache=$dir/cache" -o APT::Sandbox::User=root)
    apt-get "${APT[@]}" update >/dev/null
}
