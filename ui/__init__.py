"""User interfaces: the staff console (ui.console) and the residents' web widget (ui/widget, static files)."""
