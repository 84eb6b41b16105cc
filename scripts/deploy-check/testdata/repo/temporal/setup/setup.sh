#!/bin/sh
temporal operator namespace create --namespace mainloop
