"""What every stage stands on: the stage folder and its manifest (stage), errors (errors), config
loading (config), progress bars and tables (ui), input readers (readers) and the document row
(schema).

Import-light: this file imports nothing, so `train/` may use the core on a host with torch alone."""
