"""Grid presets shipped with repro: `repro grid --list` describes them."""
