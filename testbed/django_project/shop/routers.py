class NotesOnOther:
    """Note in the "other" database, everything else in "default"."""

    def db_for_read(self, model, **hints):
        return "other" if model.__name__ == "Note" else "default"

    db_for_write = db_for_read

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return (db == "other") == (model_name == "note")
