"""Task packages: recipe -> data -> train -> evaluate -> predict -> demo, one package per task."""
