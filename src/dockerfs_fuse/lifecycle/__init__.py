"""Arguments, checks, detaching, mounting, serving and unmounting."""
