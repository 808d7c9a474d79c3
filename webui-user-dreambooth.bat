@echo off
rem Start the WebUI for Dreambooth training (as users of the older Dreambooth extension know it).
rem Use: copy this file into the WebUI folder and run it there, or run it from the extension folder.
rem It sets REQS_FILE to this extension's requirements-webui.txt (the WebUI's pins + the matching
rem diffusers; install.py reads it too) and starts webui.bat with any arguments you give.
setlocal EnableDelayedExpansion

set "HERE=%~dp0"
if "%HERE:~-1%"=="\" set "HERE=%HERE:~0,-1%"
if exist "%HERE%\install.py" if exist "%HERE%\dreambooth\deps.py" (
    set "EXT_DIR=%HERE%"
    if not defined WEBUI_DIR for %%I in ("%HERE%\..\..") do set "WEBUI_DIR=%%~fI"
)
if not defined WEBUI_DIR set "WEBUI_DIR=%HERE%"
if not defined EXT_DIR if defined DREAMBOOTH_EXT_DIR set "EXT_DIR=%DREAMBOOTH_EXT_DIR%"
if not defined EXT_DIR (
    for /d %%D in ("%WEBUI_DIR%\extensions\*") do (
        if not defined EXT_DIR if exist "%%~fD\dreambooth\deps.py" if exist "%%~fD\webui-user-dreambooth.bat" set "EXT_DIR=%%~fD"
    )
)
if not defined EXT_DIR (
    echo Dreambooth tab not found under %WEBUI_DIR%\extensions: set DREAMBOOTH_EXT_DIR 1>&2
    exit /b 1
)
if not exist "%WEBUI_DIR%\webui.bat" (
    echo webui.bat not found in %WEBUI_DIR%: set WEBUI_DIR to the WebUI folder 1>&2
    exit /b 1
)

if not defined REQS_FILE if exist "%EXT_DIR%\..\..\requirements_versions.txt" set "REQS_FILE=%EXT_DIR%\requirements-webui.txt"
rem Less fragmentation of GPU memory during long training runs (ignored by old torch builds).
if not defined PYTORCH_CUDA_ALLOC_CONF set "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
rem Dreambooth models elsewhere:  set COMMANDLINE_ARGS=--dreambooth-models-path D:\dreambooth

cd /d "%WEBUI_DIR%"
call webui.bat %*
